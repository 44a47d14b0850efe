package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/pouchmail/pouch/admin"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

// --- pouch serve's side ---

// adminSocketPath is where pouch serve's admin socket lives: the
// admin-socket setting, DATA/admin.sock by default, "" when it is off.
func adminSocketPath(data, setting string) string {
	switch setting {
	case "off":
		return ""
	case "":
		return filepath.Join(data, "admin.sock")
	}
	return setting
}

// adminSocket is pouch serve's admin socket.
type adminSocket struct {
	path string // "" when off
	l    net.Listener
	stop context.CancelFunc
	done chan struct{}
}

// openAs opens the socket while the server still runs as root, and hands it
// to the user named by --run-as, so that a socket in a directory only root
// may write can still be made. It does nothing unless the process is root
// and the directory exists (otherwise open, after the switch, makes it).
func (a *adminSocket) openAs(runAs string) error {
	if a.path == "" || a.l != nil || os.Geteuid() != 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Dir(a.path)); err != nil {
		return nil
	}
	uid, gid, err := lookupRunAs(runAs)
	if err != nil {
		return err
	}
	if err := a.open(); err != nil {
		return err
	}
	if err := os.Lchown(a.path, uid, gid); err != nil {
		return fmt.Errorf("admin socket: %v", err)
	}
	return nil
}

// open creates the socket unless it is off or already open.
func (a *adminSocket) open() error {
	if a.path == "" || a.l != nil {
		return nil
	}
	l, err := admin.Listen(a.path)
	if err != nil {
		return err
	}
	a.l = l
	return nil
}

// serve answers operators on the socket in the background.
func (a *adminSocket) serve(h admin.Handler, log *slog.Logger) {
	if a.l == nil {
		return
	}
	log.Info("listening", "protocol", "admin", "addr", a.path)
	ctx, stop := context.WithCancel(context.Background())
	a.stop, a.done = stop, make(chan struct{})
	go func() {
		defer close(a.done)
		if err := admin.Serve(ctx, a.l, h, log); err != nil {
			log.Error("admin socket failed", "err", err)
		}
	}()
}

// close stops serving and removes the socket.
func (a *adminSocket) close() {
	if a.stop != nil {
		a.stop()
		<-a.done
	}
	if a.l != nil {
		a.l.Close()
	}
}

// adminHandler carries out the operator's requests in pouch serve.
type adminHandler struct {
	srv    *server.Server
	store  store.Store
	reload func() error
}

func (h adminHandler) Who() []admin.Session {
	infos := h.srv.Who()
	out := make([]admin.Session, len(infos))
	for i, s := range infos {
		out[i] = admin.Session(s)
	}
	return out
}

func (h adminHandler) Kick(target string) int { return h.srv.Kick(target) }

func (h adminHandler) Reload() error { return h.reload() }

func (h adminHandler) MailboxStats(ctx context.Context, user string) (store.Stats, error) {
	return storeStats(ctx, h.store, user)
}

// storeStats describes user's maildrop in st, with readable errors.
func storeStats(ctx context.Context, st store.Store, user string) (store.Stats, error) {
	r, ok := st.(store.Retainer)
	if !ok {
		return store.Stats{}, errors.New("this mail store cannot describe a maildrop")
	}
	stats, err := r.Stats(ctx, user)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return stats, fmt.Errorf("there is no maildrop for %q", user)
	case errors.Is(err, store.ErrBadUser):
		return stats, fmt.Errorf("%q cannot be a user name", user)
	}
	return stats, err
}

// --- the operator's commands ---

// adminFlags are the flags that find a running server.
type adminFlags struct {
	configFile string
	data       string
	socket     string
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.configFile, "config", "", "take --data and --admin-socket from pouch serve's TOML `file` (flags win)")
	fs.StringVar(&f.data, "data", "./pouch-data", "the server's data `directory`")
	fs.StringVar(&f.socket, "admin-socket", "", "the server's admin socket `path` (default DATA/admin.sock)")
}

// path returns the admin socket's path, reading pouch serve's configuration
// file if one was given.
func (f *adminFlags) path(fs *flag.FlagSet) (string, error) {
	if f.configFile != "" {
		set := flagNames(fs)
		sc, err := readServeConfig(f.configFile)
		if err != nil {
			return "", err
		}
		if !set["data"] {
			f.data = sc.Data.String()
		}
		if !set["admin-socket"] {
			f.socket = sc.AdminSocket.String()
		}
	}
	p := adminSocketPath(f.data, f.socket)
	if p == "" {
		return "", errAdminOff
	}
	return p, nil
}

// errAdminOff says that the server was configured without an admin socket.
var errAdminOff = errors.New(`the admin socket is off (admin-socket = "off"); turn it on to talk to the running server`)

// connect connects to the running server, or says in one sentence, after
// the command's name, why not.
func (f *adminFlags) connect(name string, fs *flag.FlagSet) (*admin.Client, error) {
	path, err := f.path(fs)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	c, err := admin.Dial(path)
	if errors.Is(err, admin.ErrNoServer) {
		where := f.data
		if f.socket != "" {
			where = path
		}
		return nil, fmt.Errorf("%s: no server is running on %s (cannot connect to %s)", name, where, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return c, nil
}

const whoUsage = `Usage: pouch who [--data DIR] [--json]

Lists the running server's open sessions: id, user (- before login), the
client's address, whether TLS is on, since when, and the octets received and
sent. Talks to the server over DATA/admin.sock, as root or as the user the
server runs as.

Examples:
  pouch who --data /var/lib/pouch
  pouch who --json | jq -r '.[] | select(.user == "alice") | .id'

Flags:
`

func runWho(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch who", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the sessions as a JSON array, for scripts")
	pos, err := parseCommand(fs, whoUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("who takes no arguments, got %q", pos[0])
	}
	c, err := af.connect("who", fs)
	if err != nil {
		return err
	}
	defer c.Close()
	sessions, err := c.Who()
	if err != nil {
		return fmt.Errorf("who: %v", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(sessions, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	if len(sessions) == 0 {
		fmt.Fprintln(stdout, "no open sessions")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tUSER\tADDRESS\tTLS\tSINCE\tBYTES-IN\tBYTES-OUT")
	for _, s := range sessions {
		u, tls := s.User, "no"
		if u == "" {
			u = "-"
		}
		if s.TLS {
			tls = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", s.ID, u, s.Remote, tls,
			s.Since.Local().Format("2006-01-02 15:04:05"), s.BytesIn, s.BytesOut)
	}
	return tw.Flush()
}

const kickUsage = `Usage: pouch kick [--data DIR] USER|SESSION

Closes every open session of USER, or the one session with the id SESSION
(as pouch who shows it). A kicked session ends like a dropped connection:
messages it marked for deletion stay. Fails when no session matched.

Examples:
  pouch kick alice
  pouch kick 3fa9c2000012

Flags:
`

func runKick(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch kick", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	pos, err := parseCommand(fs, kickUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageError("kick takes one user name or session id")
	}
	c, err := af.connect("kick", fs)
	if err != nil {
		return err
	}
	defer c.Close()
	n, err := c.Kick(pos[0])
	if err != nil {
		return fmt.Errorf("kick: %v", err)
	}
	if n == 0 {
		return fmt.Errorf("kick: no open session is %q or belongs to a user %q", pos[0], pos[0])
	}
	if n == 1 {
		fmt.Fprintln(stdout, "closed 1 session")
	} else {
		fmt.Fprintf(stdout, "closed %d sessions\n", n)
	}
	return nil
}

const reloadUsage = `Usage: pouch reload [--data DIR]

Has the running server read its users file, TLS certificates, OAuth key set
and ban list again, as SIGHUP does; open sessions stay. Fails, naming what
was kept, when something could not be read; the server then goes on with
the old version of it.

Example:
  pouch reload --data /var/lib/pouch

Flags:
`

func runReload(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch reload", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	pos, err := parseCommand(fs, reloadUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("reload takes no arguments, got %q", pos[0])
	}
	c, err := af.connect("reload", fs)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Reload(); err != nil {
		return fmt.Errorf("reload: %v", err)
	}
	fmt.Fprintln(stdout, "reloaded")
	return nil
}

const mailboxStatsUsage = `Usage: pouch mailbox stats [--data DIR | --store URL] [--json] USER

Describes USER's maildrop: messages and octets, the oldest and newest
message, how many were retrieved, the deleted messages still in the holding
area, and the legal hold. Asks the running server, or reads the Maildir
itself when no server is running; with --store, reads the database.

Example:
  pouch mailbox stats --data /var/lib/pouch alice

Flags:
`

// mailboxStats runs pouch mailbox stats.
func mailboxStats(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch mailbox stats", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the statistics as JSON, for scripts")
	sf := storeFlag(fs, &af.configFile, &af.data)
	pos, err := parseCommand(fs, mailboxStatsUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageError("mailbox stats takes one user name")
	}
	user := pos[0]
	storeURL, err := sf.url(fs, false)
	if err != nil {
		return fmt.Errorf("mailbox stats: %v", err)
	}
	var st store.Stats
	if storeURL != "" {
		// Every node reads the same database: ask it directly.
		st, err = dbStats(storeURL, user)
	} else {
		path, perr := af.path(fs)
		if perr != nil && !errors.Is(perr, errAdminOff) {
			return fmt.Errorf("mailbox stats: %v", perr)
		}
		st, err = serverStats(path, user)
		if errors.Is(err, admin.ErrNoServer) {
			// No server: read the Maildir directly.
			st, err = storeStats(context.Background(), maildir.New(filepath.Join(af.data, "mail")), user)
		}
	}
	if err != nil {
		return fmt.Errorf("mailbox stats: %v", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(admin.FromStore(st), "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	printStats(stdout, user, st)
	return nil
}

// dbStats describes user's maildrop in the database at storeURL.
func dbStats(storeURL, user string) (store.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mail, err := openMailStore(ctx, storeSettings{url: storeURL}, "")
	if err != nil {
		return store.Stats{}, err
	}
	defer mail.(io.Closer).Close()
	return storeStats(ctx, mail, user)
}

// serverStats asks the server on the admin socket at path ("" when it is
// off) to describe user's maildrop; its error wraps admin.ErrNoServer when
// no server answers there.
func serverStats(path, user string) (store.Stats, error) {
	if path == "" {
		return store.Stats{}, admin.ErrNoServer
	}
	c, err := admin.Dial(path)
	if err != nil {
		return store.Stats{}, err
	}
	defer c.Close()
	return c.MailboxStats(user)
}

func printStats(w io.Writer, user string, st store.Stats) {
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "user\t%s\n", user)
	fmt.Fprintf(tw, "messages\t%d (%d octets)\n", st.Messages, st.Octets)
	fmt.Fprintf(tw, "oldest\t%s\n", when(st.Oldest))
	fmt.Fprintf(tw, "newest\t%s\n", when(st.Newest))
	fmt.Fprintf(tw, "retrieved\t%d\n", st.Retrieved)
	fmt.Fprintf(tw, "deletion window\t%d (%d octets)", st.Held, st.HeldOctets)
	if st.Held > 0 {
		fmt.Fprintf(tw, ", deleted since %s", when(st.OldestDeleted))
	}
	fmt.Fprintln(tw)
	switch {
	case !st.Hold.Set:
		fmt.Fprintf(tw, "legal hold\tno\n")
	case st.Hold.Reason != "":
		fmt.Fprintf(tw, "legal hold\tyes, since %s: %s\n", when(st.Hold.Since), st.Hold.Reason)
	default:
		fmt.Fprintf(tw, "legal hold\tyes, since %s\n", when(st.Hold.Since))
	}
	tw.Flush()
}
