package devcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// proc is one child process of the cluster.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its output is drained
	err  error         // cmd.Wait's result, valid after done
	tail *tailBuffer
	file *os.File // per-process log file, nil when Options.Log is set
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL and waits for the exit. It is a no-op once the process is gone.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	pgid := p.pid() // Setpgid with Pgid 0: the group id is the child's pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// exitError describes an unexpected early exit, with the end of the output.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited: %v\n--- last output of %s ---\n%s", p.name, p.err, p.name, p.tail.Bytes())
}

// startProc starts bin from the bin dir with args. Output goes to
// Options.Log (prefixed with the process name) or to <Dir>/<name>.log, and
// the last 8 KiB are kept for error messages.
func (c *Cluster) startProc(name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{}), tail: &tailBuffer{max: 8 << 10}}
	var out io.Writer
	if c.opts.Log != nil {
		out = &prefixWriter{mu: &c.logMu, w: c.opts.Log, prefix: []byte("[" + name + "] ")}
	} else {
		f, err := os.OpenFile(filepath.Join(c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		p.file = f
		out = f
	}
	cmd := exec.Command(filepath.Join(c.opts.BinDir, bin), args...)
	cmd.Dir = c.dir
	cmd.Stdout = io.MultiWriter(out, p.tail)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = sysProcAttr()
	cmd.Env = append(os.Environ(), "KUBECONFIG=") // never pick up the developer's cluster
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		if p.file != nil {
			p.file.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		if p.file != nil {
			p.file.Close()
		}
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// errPortInUse marks a start failure caused by a lost race for a free port.
var errPortInUse = errors.New("address already in use")

func (p *proc) failedOnPort() bool {
	return bytes.Contains(p.tail.Bytes(), []byte("address already in use"))
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// usual race applies: bind it soon.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int) ([]int, error) {
	// Hold all listeners open until every port is chosen so they differ.
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}

// prefixWriter writes whole lines to w, each prefixed, under a shared mutex
// so that the output of several processes does not interleave mid-line.
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix []byte
	part   []byte
}

func (pw *prefixWriter) Write(p []byte) (int, error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.part = append(pw.part, p...)
	for {
		i := bytes.IndexByte(pw.part, '\n')
		if i < 0 {
			break
		}
		line := make([]byte, 0, len(pw.prefix)+i+1)
		line = append(append(line, pw.prefix...), pw.part[:i+1]...)
		if _, err := pw.w.Write(line); err != nil {
			return len(p), nil // never fail the child's output pipe
		}
		pw.part = pw.part[i+1:]
	}
	return len(p), nil
}
