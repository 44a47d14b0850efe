package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/pouchmail/pouch/loadgen"
)

// runBench is "pouch bench": the POP3 load generator.
func runBench(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      loadgen.Config
		users    = fs.String("users", "", "`file` of user:password lines ({PLAIN} prefixes are dropped); required")
		mix      = fs.String("mix", "full", "session `mix`: login (log in, QUIT), full (STAT, LIST, UIDL, RETR all, QUIT), top (LIST, TOP n 0 all, QUIT), uidl (log in, UIDL, QUIT), idle (log in and wait until the end)")
		tlsMode  = fs.String("tls", "none", "`mode`: none, implicit (POP3S) or starttls")
		caFile   = fs.String("tls-ca", "", "verify the server's certificate against this CA `file` (PEM); default: no verification")
		jsonOut  = fs.Bool("json", false, "print the report as JSON")
		probe    = new(time.Duration)
		sessions = fs.Int64("sessions", 0, "stop after this `many` sessions, shared out in turn (client i runs sessions i, i+C…: as many as users logs each in once); default: one per client unless --duration")
	)
	durationVar(fs, (*durationSetting)(probe), "probe", 0, "hold one more session open, sending NOOP every `interval`, and report its latency")
	fs.IntVar(&cfg.Clients, "clients", 1, "concurrent `sessions`")
	durationVar(fs, (*durationSetting)(&cfg.Duration), "duration", 0, "run for this `long`")
	fs.BoolVar(&cfg.Pipeline, "pipeline", false, "pipeline RETR/TOP commands (RFC 2449 PIPELINING)")
	fs.IntVar(&cfg.PipelineDepth, "pipeline-depth", 16, "most pipelined commands in flight")
	durationVar(fs, (*durationSetting)(&cfg.Timeout), "timeout", 60*time.Second, "give up on a server silent this `long`")
	fs.Float64Var(&cfg.WrongPasswordRate, "wrong-password-rate", 0, "log in with a mistyped password in this `fraction` of the sessions, chosen at random (0.02: 2%), expect -ERR and quit; reported apart (PASS-wrong), with the correct logins refused")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: pouch bench [flags] HOST:PORT

Runs a POP3 load against any server and reports sessions/s, messages/s,
MB/s and the latency (p50, p99) of every command. Client i logs in as users
i, i+C, i+2C… of the users file (C clients), so give at least as many users
as clients. Nothing is deleted. Every message retrieved is checked against
its LIST size. With --wrong-password-rate, that share of the sessions send
a mistyped password, must be refused, and count apart from sessions/s; a
correct login refused is a failure.

Examples:
  pouch bench --users users.txt --clients 64 --duration 30s 127.0.0.1:1110
  pouch bench --users users.txt --clients 64 --tls implicit --pipeline --sessions 1000 127.0.0.1:1995
  pouch bench --users users.txt --mix login --clients 32 --duration 10s --probe 10ms 127.0.0.1:1110
  pouch bench --users users.txt --clients 64 --duration 5m --wrong-password-rate 0.02 127.0.0.1:1110

Flags:
`)
		printFlags(fs.Output(), fs)
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageError("bench needs one server address HOST:PORT")
	}
	if *users == "" {
		return usageError("bench needs --users FILE")
	}
	if r := cfg.WrongPasswordRate; !(r >= 0 && r <= 1) {
		return usageError("bench: --wrong-password-rate %v is not a fraction from 0 to 1", r)
	}
	f, err := os.Open(*users)
	if err != nil {
		return err
	}
	cfg.Users, err = loadgen.ReadUsers(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *users, err)
	}
	cfg.Addr, cfg.Mix, cfg.TLS, cfg.Sessions, cfg.Probe = pos[0], loadgen.Mix(*mix), *tlsMode, *sessions, *probe
	cfg.Ready = stderr
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s: no PEM certificates", *caFile)
		}
		cfg.TLSConf = &tls.Config{RootCAs: pool}
	}
	if len(cfg.Users) < cfg.Clients && loadgen.Mix(*mix) != loadgen.MixLogin {
		fmt.Fprintf(stderr, "pouch bench: warning: %d users for %d clients: sessions will share maildrops (servers that lock them answer [IN-USE])\n", len(cfg.Users), cfg.Clients)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *jsonOut {
		return rep.WriteJSON(stdout)
	}
	rep.Write(stdout)
	if rep.Failed > 0 {
		return fmt.Errorf("%d sessions failed", rep.Failed)
	}
	return nil
}
