// Package audit writes Pouch's audit log: one JSON object per line for every
// login, failed login, logout (with the messages retrieved and deleted), ban
// and change to the users, for operators and their log tools. Passwords and
// message contents are never written.
package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/pouchmail/pouch/internal/owner"
)

// Log appends events to a file. A nil *Log writes nothing, so callers need
// not check whether auditing is on. It is safe for concurrent use.
type Log struct {
	mu  sync.Mutex
	f   *os.File
	now func() time.Time
}

// Open opens (creating it with mode 0600) the audit log at path for
// appending.
func Open(path string) (*Log, error) {
	f, err := owner.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return &Log{f: f, now: time.Now}, nil
}

// Event writes one line: {"time": ..., "event": event, ...fields}. Fields
// are key, value pairs. A failure to write is returned; the caller logs it.
func (l *Log) Event(event string, fields ...any) error {
	if l == nil {
		return nil
	}
	rec := make(map[string]any, len(fields)/2+2)
	for i := 0; i+1 < len(fields); i += 2 {
		rec[fmt.Sprint(fields[i])] = fields[i+1]
	}
	rec["time"] = l.now().UTC().Format(time.RFC3339Nano)
	rec["event"] = event
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// One write per line: with O_APPEND, lines from several processes
	// (the server and pouch user) never interleave.
	_, err = l.f.Write(append(line, '\n'))
	return err
}

// Close closes the file.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	return l.f.Close()
}
