package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// netPOP3Script drives Perl's Net::POP3 (libnet). Arguments: host port
// tls(0/1) cafile user password auth(login/apop) mode(keep/delete) outdir.
//
// $pop->get($n, $fh) prints the message's lines to $fh with dot-stuffing
// removed (Net::Cmd::read_until_dot) and the terminating "." line left out.
// The line ends depend on the transport, a quirk of libnet 3.14:
//   - plain TCP: Net::Cmd::getline splits what it reads on /\015?\012/ and
//     hands out each line with "\n", so the file has LF line ends;
//   - SSL => 1: the socket is reblessed into Net::POP3::_SSL, whose @ISA puts
//     IO::Socket::SSL before Net::POP3 (and so before Net::Cmd), so
//     IO::Socket::SSL's own getline is used and every line keeps its CRLF.
//
// top($n, $lines) returns the same kind of lines in an array reference; list
// and uidl return hashes.
const netPOP3Script = `
use strict; use warnings; use Net::POP3;
my ($host, $port, $tls, $cafile, $user, $pass, $auth, $mode, $out) = @ARGV;
my %opt = (Port => $port, Timeout => 30);
%opt = (%opt, SSL => 1, SSL_ca_file => $cafile) if $tls;
my $p = Net::POP3->new($host, %opt) or die "connect: $@";
sub w { my ($name, $data) = @_; open(my $f, ">:raw", "$out/$name") or die; print $f $data; close $f or die; }
my $count = $auth eq "apop" ? $p->apop($user, $pass) : $p->login($user, $pass);
defined $count or die "login: " . $p->message;
$count += 0;
my $list = $p->list or die "list";
w("list", join("", map { "$_ $list->{$_}\r\n" } sort { $a <=> $b } keys %$list));
my $uidl = $p->uidl or die "uidl";
w("uidl", join("", map { "$_ $uidl->{$_}\r\n" } sort { $a <=> $b } keys %$uidl));
for my $n (1 .. $count) {
    open(my $f, ">:raw", "$out/$n.retr") or die;
    $p->get($n, $f) or die "get $n: " . $p->message;
    close $f or die;
    for my $lines (0, 3) {
        my $top = $p->top($n, $lines) or die "top $n $lines";
        w("$n.top$lines", join("", @$top));
    }
    if ($mode eq "delete") { $p->delete($n) or die "delete $n"; }
}
$p->quit or die "quit: " . $p->message;
w("count", $count);
`

func TestNetPOP3(t *testing.T) {
	t.Parallel()
	perl := requireTool(t, "perl")
	logVersion(t, perl, "-MNet::POP3", "-MIO::Socket::SSL", "-e", `print "Net::POP3 $Net::POP3::VERSION, IO::Socket::SSL $IO::Socket::SSL::VERSION\n"`)
	for _, tc := range []struct {
		name string
		tls  bool
		apop bool
		mode string
	}{
		{"plain/login/keep", false, false, "keep"},
		{"plain/login/delete", false, false, "delete"},
		{"plain/apop/keep", false, true, "keep"},
		{"tls/login/keep", true, false, "keep"},
		{"tls/login/delete", true, false, "delete"},
		{"tls/apop/delete", true, true, "delete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			user, pass, auth, method := "alice", "secret one", "login", "PASS"
			if tc.apop {
				addAPOPUser(t, data)
				user, pass, auth, method = "carol", "tanstaaf", "apop", "APOP"
			}
			s := startServer(t, data)
			dir, home := clientDir(t)
			out := filepath.Join(dir, "out")
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			host, port, tls := s.host(), s.port(), "0"
			if tc.tls {
				host, port, tls = "localhost", s.tlsPort(), "1"
			}
			mustClient(t, dir, home, nil, perl, "-e", netPOP3Script,
				host, port, tls, caFile(data), user, pass, auth, tc.mode, out)
			read := func(name string) string {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(out, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			// The line ends Net::POP3 hands out (see netPOP3Script).
			form := lf
			if tc.tls {
				form = func(s string) string { return s }
			}

			if got, want := read("count"), fmt.Sprint(len(testMessages)); got != want {
				t.Errorf("message count from login: got %s, want %s", got, want)
			}
			if got, want := read("list"), wireSizes(); got != want {
				t.Errorf("LIST: %s", diff(got, want))
			}
			if got, want := read("uidl"), uidList(); got != want {
				t.Errorf("UIDL: %s", diff(got, want))
			}
			got := map[string]string{}
			for i, m := range testMessages {
				retr := read(fmt.Sprintf("%d.retr", i+1))
				got[messageID(retr)] = retr
				for _, lines := range []int{0, 3} {
					if got, want := read(fmt.Sprintf("%d.top%d", i+1, lines)), form(topOf(m.content, lines)); got != want {
						t.Errorf("TOP %d %d: %s", i+1, lines, diff(got, want))
					}
				}
			}
			checkDelivered(t, "Net::POP3 get", got, func(c string) string { return form(canonical(c)) })
			checkLogins(t, s, user+" "+method)
			left := len(testMessages)
			if tc.mode == "delete" {
				left = 0
			}
			if n := mailFiles(t, data, user); n != left {
				t.Errorf("%d messages left after Net::POP3's quit, want %d", n, left)
			}
		})
	}
}
