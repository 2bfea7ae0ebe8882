package execnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// parseExecPath splits /exec/{ns}/{pod}/{container} or
// /exec/{ns}/{pod}/{uid}/{container}.
func parseExecPath(p string) (ns, pod, uid, container string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(p, "/exec/"), "/")
	switch len(parts) {
	case 3:
		ns, pod, container = parts[0], parts[1], parts[2]
	case 4:
		ns, pod, uid, container = parts[0], parts[1], parts[2], parts[3]
	default:
		return "", "", "", "", false
	}
	if !validName(ns) || !validName(pod) || !validName(container) {
		return "", "", "", "", false
	}
	return ns, pod, uid, container, true
}

func (n *Node) handleExec(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ns, pod, uid, container, ok := parseExecPath(r.URL.Path)
	if !ok {
		http.Error(w, "execnode: want /exec/{namespace}/{pod}/[{uid}/]{container} with valid names", http.StatusNotFound)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "execnode: missing command", http.StatusBadRequest)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		http.Error(w, "execnode: closed", http.StatusServiceUnavailable)
		return
	}
	n.wg.Add(1)
	n.mu.Unlock()
	defer n.wg.Done()

	ctx, cancel := n.streamContext(r)
	defer cancel()
	r = r.WithContext(ctx)
	ex := &localExecutor{n: n, ns: ns}
	if !n.noV5 && isWebSocketV5(r) {
		n.serveExecWebSocketV5(w, r, ex, pod, uid, container, cmd, opts)
		return
	}
	remotecommand.ServeExec(w, r, ex, pod, uid, container, cmd, opts,
		n.idle, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// localExecutor implements remotecommand.Executor with os/exec.
type localExecutor struct {
	n  *Node
	ns string
}

var _ remotecommand.Executor = (*localExecutor)(nil)

// signalExit reports a process killed by a signal as exit code 128+signal,
// which is what container runtimes report (and what clients expect: 137 for
// SIGKILL). utilexec.ExitErrorWrapper would report Exited()==false and the
// API server would turn it into an internal error instead.
type signalExit struct {
	sig syscall.Signal
}

var _ utilexec.ExitError = signalExit{}

func (e signalExit) Error() string   { return "signal: " + e.sig.String() }
func (e signalExit) String() string  { return e.Error() }
func (e signalExit) Exited() bool    { return true }
func (e signalExit) ExitStatus() int { return 128 + int(e.sig) }

func (e *localExecutor) ExecInContainer(ctx context.Context, pod, uid, container string, argv []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	n := e.n
	key, dir, err := n.resolvePod(ctx, e.ns, pod, uid)
	if err != nil {
		n.logf("exec %s/%s/%s: %v", e.ns, pod, container, err)
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("execnode: work dir: %w", err)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append([]string{
		"PATH=" + hostPath(),
		"HOME=" + dir,
		"PWD=" + dir,
		"HOSTNAME=" + pod,
		"EXECNODE_INSTANCE=" + n.marker,
		"EXECNODE_POD=" + key,
	}, n.env...)
	if in != nil {
		cmd.Stdin = in
	}
	if out != nil {
		cmd.Stdout = out
	}
	if errw != nil {
		cmd.Stderr = errw
	}
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error {
		// The stream was torn down: kill the whole process group.
		return killGroup(cmd.Process.Pid)
	}
	cmd.WaitDelay = n.waitDelay

	var waitTTY func() error // tty: the command runs on a terminal (tty_linux.go)
	if tty {
		waitTTY, err = startTTY(cmd, in, out, resize)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		n.logf("exec %s/%s/%s argv0=%q args=%d: start failed: %v", e.ns, pod, container, argv[0], len(argv)-1, err)
		return fmt.Errorf("execnode: start %q: %w", argv[0], unwrapPathError(err))
	}
	pgid := cmd.Process.Pid
	n.mu.Lock()
	n.pgids[pgid] = struct{}{}
	n.mu.Unlock()
	if !n.startedExec(key, pgid) {
		_ = killGroup(pgid) // the pod ended while the command started
	}

	if waitTTY != nil {
		err = waitTTY()
	} else {
		err = cmd.Wait()
	}
	n.finishedExec(key, pgid)
	d := time.Since(start).Round(time.Millisecond)
	var ee *exec.ExitError
	switch {
	case err == nil || errors.Is(err, exec.ErrWaitDelay):
		n.logf("exec %s/%s/%s argv0=%q args=%d: exit 0 in %v", e.ns, pod, container, argv[0], len(argv)-1, d)
		return nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			n.logf("exec %s/%s/%s argv0=%q args=%d: %v in %v (canceled=%v)", e.ns, pod, container, argv[0], len(argv)-1, ws.Signal(), d, ctx.Err() != nil)
			return signalExit{sig: ws.Signal()}
		}
		n.logf("exec %s/%s/%s argv0=%q args=%d: exit %d in %v", e.ns, pod, container, argv[0], len(argv)-1, ee.ExitCode(), d)
		return &utilexec.ExitErrorWrapper{ExitError: ee}
	default:
		n.logf("exec %s/%s/%s argv0=%q args=%d: %v in %v", e.ns, pod, container, argv[0], len(argv)-1, err, d)
		return fmt.Errorf("execnode: %w", err)
	}
}

// unwrapPathError drops the argv[0] path wrapper duplication from
// exec.Error/PathError messages while keeping the cause.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func hostPath() string {
	if p := os.Getenv("PATH"); p != "" {
		return p
	}
	return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

func killGroup(pgid int) error {
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}
