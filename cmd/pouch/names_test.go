package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeMaildir makes a Maildir under root/name with the given messages in
// new/ and cur/.
func writeMaildir(t *testing.T, root, name string, newMsgs, curMsgs []string) {
	t.Helper()
	for sub, msgs := range map[string][]string{"new": newMsgs, "cur": curMsgs, "tmp": nil} {
		dir := filepath.Join(root, name, sub)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := os.WriteFile(filepath.Join(dir, m), []byte("Subject: "+m+"\r\n\r\nbody\r\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// Mail delivered under a name in decomposed form (from a users file line
// written so) is reported at start, with a command that gives it to the
// normalized name, whether or not that name has a Maildir yet; the mail is
// not moved by pouch.
func TestWarnMailNames(t *testing.T) {
	for _, sh := range []string{"sh", "find", "mv"} {
		if _, err := exec.LookPath(sh); err != nil {
			t.Skip(sh, "not found")
		}
	}
	root := filepath.Join(t.TempDir(), "mail")
	const (
		nfdJose = "Jose\u0301"         // José, decomposed
		nfcJose = "Jos\u00e9"          // José, composed
		wideBob = "\uff42\uff4f\uff42" // ｂｏｂ, full width
		nfdAnne = "Ann\u0065\u0301's"  // Anné's, decomposed, with a quote
	)
	writeMaildir(t, root, nfdJose, []string{"1.a"}, []string{"2.b:2,S"})
	writeMaildir(t, root, nfcJose, []string{"3.c"}, nil)
	writeMaildir(t, root, wideBob, nil, []string{"4.d:2,"})
	writeMaildir(t, root, nfdAnne, []string{"5.e"}, nil)
	writeMaildir(t, root, "alice", []string{"6.f"}, nil)
	writeMaildir(t, root, "Zo\u00eb", []string{"7.g"}, nil) // already composed
	os.WriteFile(filepath.Join(root, "Ze\u0301.txt"), nil, 0o600)
	os.Mkdir(filepath.Join(root, ".Ze\u0301"), 0o700)

	var logs bytes.Buffer
	// warn reports on the mail directory of data as pouch serve does.
	warn := func(data string) {
		t.Helper()
		entries, err := checkDataDir(data)
		if err != nil {
			t.Fatal(err)
		}
		warnMailNames(filepath.Join(data, "mail"), entries, slog.New(slog.NewJSONHandler(&logs, nil)))
	}
	warn(filepath.Dir(root))
	got := map[string]map[string]string{} // dir: the record
	sc := bufio.NewScanner(&logs)
	for sc.Scan() {
		var rec map[string]string
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("%v: %s", err, sc.Bytes())
		}
		got[rec["dir"]] = rec
	}
	want := map[string]string{nfdJose: nfcJose, wideBob: "bob", nfdAnne: "Ann\u00e9's"}
	if len(got) != len(want) {
		t.Errorf("%d warnings, want %d:\n%s", len(got), len(want), logs.String())
	}
	for from, to := range want {
		rec := got[filepath.Join(root, from)]
		if rec == nil || rec["level"] != "WARN" || rec["normalized"] != filepath.Join(root, to) || rec["merge"] == "" {
			t.Errorf("%q: warning %v, want one naming %q and the command", from, rec, to)
		}
	}
	// Nothing was moved.
	if names := listDir(t, filepath.Join(root, nfdJose, "new")); !slices.Equal(names, []string{"1.a"}) {
		t.Fatalf("mail moved at start: %v", names)
	}

	// The commands do what they say.
	for from := range want {
		cmd := got[filepath.Join(root, from)]["merge"]
		if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	for _, c := range []struct {
		dir, sub string
		want     []string
	}{
		{nfcJose, "new", []string{"1.a", "3.c"}},
		{nfcJose, "cur", []string{"2.b:2,S"}},
		{nfdJose, "new", nil},
		{nfdJose, "cur", nil},
		{"bob", "cur", []string{"4.d:2,"}},
		{"Ann\u00e9's", "new", []string{"5.e"}},
	} {
		if names := listDir(t, filepath.Join(root, c.dir, c.sub)); !slices.Equal(names, c.want) {
			t.Errorf("%s/%s after the merge: %v, want %v", c.dir, c.sub, names, c.want)
		}
	}
	logs.Reset()
	warn(filepath.Dir(root))
	if n := bytes.Count(logs.Bytes(), []byte("\n")); n != 1 {
		t.Errorf("after the merges %d warnings, want 1 (the emptied decomposed Maildir):\n%s", n, logs.String())
	}

	// No mail directory yet: nothing to say.
	logs.Reset()
	warn(t.TempDir())
	if logs.Len() != 0 {
		t.Errorf("warnings without a mail directory: %s", logs.String())
	}
}

// pouch serve reports such a Maildir as it starts, once it has read the
// users file (here it stops at the missing certificate, which comes later).
func TestServeWarnsMailNames(t *testing.T) {
	data := t.TempDir()
	writeMaildir(t, filepath.Join(data, "mail"), "Jose\u0301", []string{"1.a"}, nil)
	missing := filepath.Join(data, "missing.pem")
	_, e, code := pouch(t, "", "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "", "--tls-cert", missing, "--tls-key", missing)
	if code != 1 || !strings.Contains(e, "missing.pem") || !strings.Contains(e, "not in normalized form") ||
		!strings.Contains(e, "Jos\u00e9") {
		t.Errorf("serve with mail under a decomposed name: exit %d, %q", code, e)
	}
	if names := listDir(t, filepath.Join(data, "mail", "Jose\u0301", "new")); !slices.Equal(names, []string{"1.a"}) {
		t.Errorf("mail moved by serve: %v", names)
	}
}
