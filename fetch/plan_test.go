package fetch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// A UIDL that vanished from a (partial) LIST and comes back is not
// downloaded a second time, and not deleted.
func TestTombstonedUIDLNotFetchedAgain(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 x
		S: .
		C: QUIT
		S: +OK`)
	os.MkdirAll(a.StateDir, 0o700)
	os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"),
		fmt.Appendf(nil, "pouch-fetch-journal 2\nT %d x\n", time.Now().Unix()), 0o600)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 1 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, dir, nil)
}

// TestPlan decides, for a listing and the journal's records, what a run
// does with each message.
func TestPlan(t *testing.T) {
	const day = 24 * 60 * 60
	now := time.Unix(100*day, 0)
	ago := func(sec int64) int64 { return now.Unix() - sec }
	type want struct {
		fetch, dele, recovered, mark string // message numbers
		kept, skipped                int
		warns                        []string // each a part of one warning, in order
	}
	for _, tc := range []struct {
		name    string
		account Account
		noUIDL  bool
		list    string // "NUM SIZE UIDL" lines; UIDL "-": none, "!": invalid
		journal string // records, as the journal writes them
		stored  string // UIDLs the destination holds, each with "/SIZE" if its digest has one; "*": it cannot tell
		want    want
	}{
		{name: "new messages are downloaded, and deleted only once stored",
			list: "1 10 a\n2 20 b", stored: "*",
			want: want{fetch: "1 2"}},
		{name: "downloaded before: deleted at once",
			list: "1 10 a\n2 20 b", journal: fmt.Sprintf("%d a", ago(1)),
			want: want{fetch: "2", dele: "1"}},
		{name: "--keep: kept until due",
			account: Account{Keep: 14 * 24 * time.Hour},
			list:    "1 10 a\n2 20 b", journal: fmt.Sprintf("%d a\n%d b", ago(day), ago(15*day)),
			want: want{dele: "2", kept: 1}},
		{name: "--keep forever",
			account: Account{KeepForever: true},
			list:    "1 10 a", journal: fmt.Sprintf("%d a", ago(1000*day)),
			want: want{kept: 1}},
		{name: "message numbers with gaps",
			list: "2 10 a\n5 20 b", journal: fmt.Sprintf("%d b", ago(1)),
			want: want{fetch: "2", dele: "5"}},
		{name: "no UIDL, an invalid one: skipped",
			list: "1 10 -\n2 10 !\n3 10 c",
			want: want{fetch: "3", skipped: 2, warns: []string{"message 1 has no UIDL"}}},
		{name: "a UIDL shared by two messages: neither downloaded nor deleted",
			list: "1 10 a\n2 10 a\n3 10 b", journal: fmt.Sprintf("%d a", ago(1)),
			want: want{fetch: "3", skipped: 2, warns: []string{`message 1: UIDL "a" is shared by 2`, `message 2: UIDL "a" is shared by 2`}}},
		{name: "quarantined (Q): left alone",
			list: "1 10 a\n2 10 b", journal: fmt.Sprintf("Q a\n%d b\nQ b", ago(1)),
			want: want{skipped: 2, warns: []string{`message 1: UIDL "a" arrived damaged`, `message 2: UIDL "b" arrived damaged`}}},
		{name: "quarantined, --retry-quarantined: downloaded again",
			account: Account{RetryQuarantined: true},
			list:    "1 10 a\n2 10 b", journal: fmt.Sprintf("Q a\n%d b\nQ b", ago(1)),
			want: want{fetch: "1 2"}},
		{name: "on the server before --mark-existing (E): never deleted",
			list: "1 10 a", journal: fmt.Sprintf("E %d a", ago(1000*day)),
			want: want{kept: 1}},
		{name: "tombstoned: neither downloaded again nor deleted",
			list: "1 10 a", journal: fmt.Sprintf("T %d a", ago(day)),
			want: want{skipped: 1, warns: []string{`UIDL "a" left the server's list recently and came back`}}},
		{name: "pending and stored: recovered, then deleted",
			list: "1 10 a\n2 10 b", journal: "P a\nP b", stored: "a",
			want: want{fetch: "2", recovered: "1", dele: "1"}},
		{name: "pending and stored, --keep: recovered and kept",
			account: Account{Keep: time.Hour},
			list:    "1 10 a", journal: "P a", stored: "a",
			want: want{recovered: "1", kept: 1}},
		{name: "stored without a pending record: an earlier message, downloaded",
			list: "1 10 a", stored: "a",
			want: want{fetch: "1"}},
		{name: "pending, and a destination that cannot tell: downloaded",
			list: "1 10 a", journal: "P a", stored: "*",
			want: want{fetch: "1"}},
		{name: "downloaded with another size: a new message under a reused UIDL, downloaded",
			list: "1 10 a\n2 20 b", journal: fmt.Sprintf("%d a 7\n%d b 20", ago(1), ago(1)),
			want: want{fetch: "1", dele: "2", warns: []string{`message 1: UIDL "a" came back with another size (10 octets, was 7): taken as a new message`}}},
		{name: "downloaded with an unknown size (an older journal): as before",
			list: "1 10 a", journal: fmt.Sprintf("%d a", ago(1)),
			want: want{dele: "1"}},
		{name: "--keep: a reused UIDL with another size is downloaded, the same size kept",
			account: Account{Keep: time.Hour},
			list:    "1 10 a\n2 20 b", journal: fmt.Sprintf("%d a 7\n%d b 20", ago(1), ago(1)),
			want: want{fetch: "1", kept: 1, warns: []string{`UIDL "a" came back with another size`}}},
		{name: "--keep forever: a reused UIDL with another size is downloaded",
			account: Account{KeepForever: true},
			list:    "1 10 a", journal: fmt.Sprintf("%d a 7", ago(1000*day)),
			want: want{fetch: "1", warns: []string{`UIDL "a" came back with another size`}}},
		{name: "on the server before --mark-existing, another size now: downloaded",
			list: "1 10 a", journal: fmt.Sprintf("E %d a 7", ago(1000*day)),
			want: want{fetch: "1", warns: []string{`UIDL "a" came back with another size`}}},
		{name: "tombstoned with another size: a new message, downloaded",
			list: "1 10 a\n2 10 b", journal: fmt.Sprintf("T %d a 7\nT %d b 10", ago(day), ago(day)),
			want: want{fetch: "1", skipped: 1, warns: []string{`UIDL "a" came back with another size`, `UIDL "b" left the server's list recently and came back`}}},
		{name: "reused UIDL pending, stored under its size: recovered",
			list: "1 10 a", journal: fmt.Sprintf("%d a 7\nP a 10", ago(1)), stored: "a a/7 a/10",
			want: want{recovered: "1", dele: "1"}},
		{name: "reused UIDL pending, only the earlier message stored: downloaded",
			list: "1 10 a", journal: fmt.Sprintf("%d a 7\nP a 10", ago(1)), stored: "a a/7",
			want: want{fetch: "1"}},
		{name: "pending with another size than listed: downloaded",
			list: "1 10 a", journal: "P a 7", stored: "a/7",
			want: want{fetch: "1"}},
		{name: "--max-size: left on the server",
			account: Account{MaxSize: 15},
			list:    "1 10 a\n2 20 b",
			want:    want{fetch: "1", skipped: 1, warns: []string{"message 2 (20 octets) is larger than --max-size: left on the server"}}},
		{name: "--max-size --delete-oversized",
			account: Account{MaxSize: 15, DeleteOversized: true},
			list:    "1 10 a\n2 20 b",
			want:    want{fetch: "1", dele: "2", skipped: 1, warns: []string{"deleted without downloading"}}},
		{name: "no UIDL on the server: every message, whatever the journal",
			account: Account{MaxSize: 15}, noUIDL: true,
			list: "1 10 -\n2 20 -\n3 10 -",
			want: want{fetch: "1 3", skipped: 1, warns: []string{"message 2 (20 octets)"}}},
		{name: "--mark-existing: records what is there, deletes nothing",
			account: Account{MarkExisting: true, MaxSize: 15},
			list:    "1 10 a\n2 10 b\n3 10 c\n4 20 d\n5 10 e",
			journal: fmt.Sprintf("%d b\nQ c\nE %d e", ago(1), ago(1)),
			want:    want{mark: "1 4", kept: 2, skipped: 1, warns: []string{`UIDL "c" arrived damaged`}}},
		{name: "--mark-existing --retry-quarantined: a quarantined message is not marked",
			account: Account{MarkExisting: true, RetryQuarantined: true},
			list:    "1 10 a\n2 10 c", journal: fmt.Sprintf("Q c\n%d a\nQ a", ago(1)),
			want: want{skipped: 2}},
		{name: "--mark-existing with a message a killed run stored: recovered, kept",
			account: Account{MarkExisting: true},
			list:    "1 10 a\n2 10 b", journal: "P a", stored: "a",
			want: want{recovered: "1", mark: "2", kept: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &Journal{ids: newUIDTable(), mark: -1}
			for _, line := range strings.Split(tc.journal, "\n") {
				if line != "" && !j.parse([]byte(line), 5) {
					t.Fatalf("journal line %q", line)
				}
			}
			var l listing
			for _, line := range strings.Split(tc.list, "\n") {
				var num int
				var size int64
				var uid string
				fmt.Sscan(line, &num, &size, &uid)
				if err := l.add(num, size); err != nil {
					t.Fatal(err)
				}
				switch uid {
				case "-":
				case "!":
					l.setID(l.len()-1, badID)
				default:
					id, _, err := j.Listed([]byte(uid))
					if err != nil {
						t.Fatal(err)
					}
					l.setID(l.len()-1, id)
				}
			}
			in := planInput{a: &tc.account, l: &l, ids: j.ids, noUIDL: tc.noUIDL, now: now}
			if tc.stored != "*" {
				in.stored = func(uid string, size int64) bool {
					if size >= 0 {
						uid += fmt.Sprintf("/%d", size)
					}
					return slices.Contains(strings.Fields(tc.stored), uid)
				}
			}
			p := makePlan(in)
			nums := func(c chunks[uint32], indexes bool) string {
				var s []string
				c.each(func(v uint32) {
					if indexes {
						v = l.num(int(v))
					}
					s = append(s, fmt.Sprint(v))
				})
				return strings.Join(s, " ")
			}
			got := want{fetch: nums(p.fetch, true), dele: nums(p.dele, false), recovered: nums(p.recovered, true),
				mark: nums(p.mark, true), kept: p.kept, skipped: p.skipped}
			w := tc.want
			w.warns = nil
			if !reflect.DeepEqual(got, w) {
				t.Errorf("got  %+v\nwant %+v", got, w)
			}
			if len(p.warnings) != len(tc.want.warns) {
				t.Fatalf("warnings %q, want %q", p.warnings, tc.want.warns)
			}
			for i, part := range tc.want.warns {
				if !strings.Contains(p.warnings[i], part) {
					t.Errorf("warning %q, want %q in it", p.warnings[i], part)
				}
			}
			var bytes int64
			p.fetch.each(func(i uint32) { bytes += l.size(int(i)) })
			if p.fetchBytes != bytes {
				t.Errorf("fetchBytes %d, want %d", p.fetchBytes, bytes)
			}
			// Making a plan changes no record.
			j.ids.Each(func(r ref) {
				if j.ids.Has(r, fStaged) {
					t.Errorf("%s staged", j.ids.UID(r))
				}
			})
		})
	}
}
