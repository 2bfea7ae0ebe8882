//go:build linux

package execnode

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// openPTY opens a new pseudo-terminal pair: the controller side (kept by
// the node) and the terminal the command gets.
func openPTY() (ctl, term *os.File, err error) {
	ctl, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	fd := int(ctl.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		ctl.Close()
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		ctl.Close()
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		ctl.Close()
		return nil, nil, err
	}
	return ctl, term, nil
}

func setSize(f *os.File, s remotecommand.TerminalSize) {
	ws := &unix.Winsize{Row: s.Height, Col: s.Width}
	_ = unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, ws)
}

// startTTY starts cmd on a new terminal, as a container runtime does for
// tty=true: the command leads a new session whose controlling terminal it
// is (so Ctrl-C on the input is SIGINT to it), stdout and stderr are the
// terminal, in is copied to the terminal's input and the terminal's output
// to out. wait waits for the command and for its output to be copied.
// Closing the controller side when the command is gone hangs the terminal
// up.
func startTTY(cmd *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) (wait func() error, err error) {
	ctl, term, err := openPTY()
	if err != nil {
		return nil, fmt.Errorf("execnode: opening a terminal: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = term, term, term
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		ctl.Close()
		term.Close()
		return nil, err
	}
	term.Close()
	if resize != nil {
		go func() {
			for s := range resize {
				setSize(ctl, s)
			}
		}()
	}
	if in != nil {
		go func() { _, _ = io.Copy(ctl, in) }()
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		if out == nil {
			out = io.Discard
		}
		// Reading the controller side fails with EIO once no process
		// holds the terminal open any more: that is the end of the output.
		_, _ = io.Copy(out, ctl)
	}()
	return func() error {
		err := cmd.Wait()
		<-copied
		ctl.Close()
		var pe *os.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}, nil
}
