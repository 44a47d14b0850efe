package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store/pg"
)

// storeUser runs pouch user add, passwd, del, disable and enable for name
// on the accounts table of the --store database, as runUser does on the
// users file: the same names, the same password rules, the same audit
// events.
func storeUser(action, name string, accts accountsSettings, data, breached string, stdin io.Reader, stderr io.Writer) error {
	if err := auth.ValidName(name); err != nil {
		return usageError("user %s: %v", action, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	mail, err := openMailStore(ctx, storeSettings{url: accts.store}, "")
	if err != nil {
		return fmt.Errorf("user %s: %v", action, err)
	}
	db := mail.(*pg.Store)
	defer db.Close()
	where := redactedURL(accts.store)
	var done string
	switch action {
	case "add", "passwd":
		// Say what is wrong with the name before asking for a password.
		_, err := db.LookupAccount(ctx, name)
		switch {
		case err == nil && action == "add":
			return fmt.Errorf("user add: user %q already exists in %s", name, where)
		case errors.Is(err, pg.ErrNoAccount) && action == "passwd":
			return fmt.Errorf("user passwd: no user %q in %s", name, where)
		case err != nil && !errors.Is(err, pg.ErrNoAccount):
			return fmt.Errorf("user %s: %v", action, err)
		}
		pw, err := newPassword(action, name, breached, stdin, stderr)
		if err != nil {
			return err
		}
		stored, fields, err := auth.NewStoredPassword(pw)
		if err != nil {
			return fmt.Errorf("user %s: %v", action, err)
		}
		if action == "add" {
			err = db.AddAccount(ctx, pg.Account{Name: name, Password: stored, Fields: fields})
			if err == nil {
				err = db.Create(name)
			}
			done = "added user " + name
		} else {
			var drop []string
			if _, ok := fields[auth.FieldSCRAM]; !ok {
				drop = []string{auth.FieldSCRAM} // the old keys would let the old password in
			}
			err = db.SetAccountPassword(ctx, name, stored, fields, drop)
			done = "changed the password of " + name
		}
		if err != nil {
			return fmt.Errorf("user %s: %v", action, describeAccountErr(err, name, where))
		}
		warnSCRAM(pw, stderr)
	case "del":
		if err := db.DeleteAccount(ctx, name); err != nil {
			return fmt.Errorf("user del: %v", describeAccountErr(err, name, where))
		}
		done = fmt.Sprintf("deleted user %s (its maildrop is kept)", name)
	case "disable", "enable":
		if err := db.SetAccountFields(ctx, name, noLogin(action)); err != nil {
			return fmt.Errorf("user %s: %v", action, describeAccountErr(err, name, where))
		}
		done = action + "d POP3 access for " + name
	}
	userChanged(data, action, name, done, stderr)
	return nil
}

// describeAccountErr says what a change of the accounts table ran into.
func describeAccountErr(err error, name, where string) error {
	switch {
	case errors.Is(err, pg.ErrAccountExists):
		return fmt.Errorf("user %q already exists in %s", name, where)
	case errors.Is(err, pg.ErrNoAccount):
		return fmt.Errorf("no user %q in %s", name, where)
	}
	return err
}
