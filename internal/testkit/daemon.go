package testkit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Daemon is a server program that a test runs as its child, such as
// PostgreSQL, MariaDB or slapd (internal/pgtest, mariadbtest, ldaptest):
// it dies with the test binary (SIGKILL on the parent's death), so that a
// binary killed by its timeout leaves no server behind, and its output is
// appended to a log file, whose end the errors quote. It may be started
// again after it stopped. A Daemon is safe for concurrent use.
type Daemon struct {
	// Name names the program in errors, as in "slapd".
	Name string
	// Log is the path of the file its output goes to.
	Log string

	mu     sync.Mutex
	cmd    *exec.Cmd     // while running
	exited chan struct{} // closed when cmd has been waited for
}

// Start starts cmd and waits until ready returns nil, asking every 20 ms
// for up to within; it fails if the program exits first.
func (d *Daemon) Start(cmd *exec.Cmd, within time.Duration, ready func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		return fmt.Errorf("%s: already running", d.Name)
	}
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	d.cmd, d.exited = cmd, exited
	deadline := time.Now().Add(within)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			d.cmd = nil
			return fmt.Errorf("%s exited at start: %s", d.Name, d.LogTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %v: %v\n%s", d.Name, within, err, d.LogTail())
		}
	}
}

// Stop sends sig to the program and waits for it to exit: for up to
// grace, after which it is killed. A program that is not running, or that
// has exited on its own, is left as it is.
func (d *Daemon) Stop(sig os.Signal, grace time.Duration) error {
	return d.stop(grace, func(p *os.Process) error { return p.Signal(sig) })
}

// StopWith is Stop with end, such as the program's own stop command, in
// the place of a signal.
func (d *Daemon) StopWith(grace time.Duration, end func() error) error {
	return d.stop(grace, func(*os.Process) error { return end() })
}

func (d *Daemon) stop(grace time.Duration, end func(*os.Process) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return nil
	}
	select {
	case <-d.exited:
	default:
		if err := end(d.cmd.Process); err != nil {
			return err
		}
		select {
		case <-d.exited:
		case <-time.After(grace):
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	d.cmd = nil
	return nil
}

// Signal sends sig to the program; it fails when it is not running.
func (d *Daemon) Signal(sig os.Signal) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return errors.New(d.Name + ": not running")
	}
	return d.cmd.Process.Signal(sig)
}

// Pid is the program's process id, or 0 when it is not running.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// LogTail is the end of the program's log, for error messages.
func (d *Daemon) LogTail() string {
	b, _ := os.ReadFile(d.Log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
