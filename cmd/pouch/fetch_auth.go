package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/fetch/oauth"
)

// openBrowser opens the sign-in address in the desktop's browser; the
// tests play the browser instead.
var openBrowser = oauth.SystemBrowser

// runFetchAuth is pouch fetch auth login|logout|status: the OAuth 2.0
// sign-in of accounts with a provider (fetch/oauth).
func runFetchAuth(fa *fetchArgs, args []string, stdin io.Reader, stores *tokenStores, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("pouch fetch auth: give login, logout or status")
	}
	cmd, names := args[0], args[1:]
	switch cmd {
	case "login", "logout":
		if fa.c.configFile != "" && len(names) != 1 {
			return usageError("pouch fetch auth %s: name one account of %s", cmd, fa.c.configFile)
		}
	case "status":
	default:
		return usageError("pouch fetch auth: unknown command %q: use login, logout or status", cmd)
	}
	if fa.c.device && fa.c.browser {
		return usageError("pouch fetch auth login: give --device or --browser, not both")
	}
	fr, err := loadAccounts(fa, names, true, stores, stderr)
	if err != nil {
		return err
	}
	if len(fr.bad) > 0 {
		return fr.bad[0].err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cmd != "status" && fr.accts[0].oauth == nil {
		return usageError(`account %s has no provider: set provider = "gmail", "microsoft" or "custom" (and client-id) to sign it in with OAuth 2.0`, fr.accts[0].acct.DisplayName())
	}
	switch cmd {
	case "login":
		na := fr.accts[0]
		mode := oauth.Auto
		switch {
		case fa.c.device:
			mode = oauth.Device
		case fa.c.browser:
			mode = oauth.Browser
		}
		err := oauth.Login(ctx, *na.oauth, stores.get(na.stateDir()), oauth.LoginOptions{
			Mode: mode, Out: stderr, In: stdin, OpenBrowser: openBrowser})
		if err != nil {
			return &exitError{code: exitNeedsUser, msg: err.Error()}
		}
		return nil
	case "logout":
		na := fr.accts[0]
		if err := oauth.Logout(ctx, *na.oauth, stores.get(na.stateDir())); err != nil {
			return &exitError{code: exitFetchFailed, msg: err.Error()}
		}
		fmt.Fprintf(stderr, "pouch fetch: %s: signed out; its token file is removed\n", na.oauth.Account)
		return nil
	}
	needs := 0
	for _, na := range fr.accts {
		line, ok := authStatus(na, stores)
		if !ok {
			needs++
		}
		fmt.Fprintf(stderr, "%s\n", line)
	}
	if needs > 0 {
		return &exitError{code: exitNeedsUser, msg: fmt.Sprintf("%d of %d accounts must sign in", needs, len(fr.accts))}
	}
	return nil
}

// authStatus describes an account's sign-in in one line; ok is false when
// the account must sign in before it can be fetched.
func authStatus(na namedAccount, stores *tokenStores) (string, bool) {
	name := na.acct.DisplayName()
	if na.oauth == nil {
		return name + ": no provider; it logs in with a password or a token command", true
	}
	st, err := oauth.Describe(*na.oauth, stores.get(na.stateDir()))
	login := "pouch fetch auth login " + name
	switch {
	case err != nil:
		return fmt.Sprintf("%s: %s", name, strings.TrimPrefix(err.Error(), "account "+name+": ")), false
	case !st.SignedIn:
		return fmt.Sprintf("%s: %s, not signed in; run: %s", name, na.oauth.Provider, login), false
	case st.Mismatch != "":
		return fmt.Sprintf("%s: %s, signed in, but %s; run: %s", name, st.Provider, st.Mismatch, login), false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s, signed in %s", name, st.Provider, st.Obtained.Local().Format(time.DateTime))
	switch {
	case st.Expiry.IsZero():
	case time.Now().Before(st.Expiry):
		fmt.Fprintf(&b, "; access token good until %s", st.Expiry.Local().Format(time.DateTime))
	default:
		fmt.Fprintf(&b, "; access token expired %s", st.Expiry.Local().Format(time.DateTime))
	}
	if st.Refreshable {
		b.WriteString(", refreshed by itself")
	} else {
		b.WriteString(", with no refresh token: sign in again when it expires")
	}
	return b.String(), st.Refreshable || time.Now().Before(st.Expiry)
}
