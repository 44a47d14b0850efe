package audit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Event("login", "user", "alice", "n", i)
		}()
	}
	wg.Wait()
	l.Event("logout", "user", "alice", "retrieved", 3, "deleted", 2)
	l.Close()
	var nilLog *Log
	if err := nilLog.Event("login"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	f, _ := os.Open(path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	var last map[string]any
	for sc.Scan() {
		last = nil
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %d is not JSON: %q", n+1, sc.Text())
		}
		if last["time"] == nil || last["event"] == nil {
			t.Fatalf("line %d lacks time or event: %v", n+1, last)
		}
		n++
	}
	if n != 51 || last["event"] != "logout" || last["deleted"] != float64(2) {
		t.Fatalf("%d lines, last %v", n, last)
	}
}
