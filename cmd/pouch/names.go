package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/pouchmail/pouch/auth"
)

// mailNameMismatch is a Maildir in the mail root under a user name that
// auth.NormalizeName writes otherwise (decomposed accents, full-width
// letters): logins and deliveries use the normalized name (RFC 8265 §3.4),
// so the mail in it is no longer seen.
type mailNameMismatch struct {
	dir        string // the Maildir as it is
	normalized string // the Maildir of the normalized name
	exists     bool   // whether that one exists too
}

// mailNameMismatches lists the entries of mailRoot, as entries gives them,
// whose names are not in normalized form.
func mailNameMismatches(mailRoot string, entries []os.DirEntry) []mailNameMismatch {
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		present[e.Name()] = true
	}
	var out []mailNameMismatch
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || e.Type().IsRegular() {
			continue
		}
		norm := auth.NormalizeName(name)
		if norm == name {
			continue
		}
		out = append(out, mailNameMismatch{
			dir:        filepath.Join(mailRoot, name),
			normalized: filepath.Join(mailRoot, norm),
			exists:     present[norm],
		})
	}
	return out
}

// mergeCommand is the shell command that gives the mail of m.dir to the
// normalized name, to run while pouch is stopped: a rename when that name
// has no Maildir yet, else a move of the messages of new/ and cur/, which
// keep their names (and so their UIDLs). Nothing is overwritten.
func (m mailNameMismatch) mergeCommand() string {
	if !m.exists {
		return "mv -n " + shellQuote(m.dir) + " " + shellQuote(m.normalized)
	}
	return "for d in new cur; do find " + shellQuote(m.dir) + "/$d -maxdepth 1 -type f ! -name '.*' -exec mv -n {} " +
		shellQuote(m.normalized) + "/$d/ ';'; done"
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// warnMailNames logs each Maildir of mailRoot (whose entries checkDataDir
// listed) under a name in another form than its normalized one, with the
// command that merges it. The mail is not moved: the operator decides, with
// pouch stopped.
func warnMailNames(mailRoot string, entries []os.DirEntry, log *slog.Logger) {
	for _, m := range mailNameMismatches(mailRoot, entries) {
		log.Warn("mail directory under a user name that is not in normalized form: logins and deliveries use the normalized name, so its mail is not seen; stop pouch, merge it and remove it",
			"dir", m.dir, "normalized", m.normalized, "merge", m.mergeCommand())
	}
}
