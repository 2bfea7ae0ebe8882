package podexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// TerminalSize is the size of a terminal, in characters.
type TerminalSize = remotecommand.TerminalSize

// DefaultTerminalSize is the terminal a TTYRequest without a Size gets:
// wide enough that a login URL is printed on one line.
var DefaultTerminalSize = TerminalSize{Width: 200, Height: 50}

// TTYRequest is one interactive command on a terminal (tty=true): the
// program sees a real terminal (isatty, line discipline, Ctrl-C as SIGINT),
// its stdout and stderr arrive merged as the terminal's output.
type TTYRequest struct {
	Namespace string
	Pod       string
	// Container may be empty when the pod has a single container.
	Container string
	// Argv is run as it is (no shell, no environment preamble: stdin is
	// the terminal's keyboard, not a channel for secrets).
	Argv []string
	// Stdin is the keyboard. The stream ends when the command exits, or
	// when ctx is done; Stdin reaching EOF half-closes the terminal's input.
	Stdin io.Reader
	// Output receives the terminal's output as it arrives. Calls are
	// serialised and none happen after RunTTY returns. The slice is only
	// valid during the call.
	Output func([]byte)
	// Size is the terminal's size (zero: DefaultTerminalSize); Resize, if
	// set, delivers later sizes.
	Size   TerminalSize
	Resize <-chan TerminalSize
}

// TTYResult is the outcome of a terminal command.
type TTYResult struct {
	// ExitCode is nil when the exit status is unknown (the stream was torn
	// down by ctx).
	ExitCode  *int
	Duration  time.Duration
	Transport string
}

// sizeQueue is remotecommand's TerminalSizeQueue: the initial size, then
// the request's resizes, until the stream ends.
type sizeQueue struct {
	first  TerminalSize
	sent   bool
	resize <-chan TerminalSize
	done   <-chan struct{}
}

func (q *sizeQueue) Next() *TerminalSize {
	if !q.sent {
		q.sent = true
		return &q.first
	}
	select {
	case s, ok := <-q.resize:
		if !ok {
			return nil
		}
		return &s
	case <-q.done:
		return nil
	}
}

// outputWriter serialises Output calls and stops them when RunTTY returns.
type outputWriter struct {
	mu     sync.Mutex
	f      func([]byte)
	closed bool
}

func (w *outputWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	if w.f != nil && len(p) > 0 {
		w.f(p)
	}
	return len(p), nil
}

func (w *outputWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// RunTTY runs req on a terminal over the same transport as Run (WebSocket
// v5.channel.k8s.io, falling back to SPDY), with tty=true and a terminal
// size queue, and waits until the command exits or ctx is done.
//
// A command that exits (with any status) is not an error. ctx being done
// tears the stream down and returns a TTYResult without an ExitCode and
// ctx's error. As with Run, Kubernetes does not promise to kill the
// process when the client goes away; on a terminal the runtime closing
// the terminal hangs it up (SIGHUP) in practice, and the caller should
// send Ctrl-C first (see the plugin's login terminal).
func (e *Executor) RunTTY(ctx context.Context, req TTYRequest) (*TTYResult, error) {
	start := time.Now()
	res := &TTYResult{}
	if req.Namespace == "" || req.Pod == "" {
		return res, errors.New("exec: namespace and pod are required")
	}
	if len(req.Argv) == 0 {
		return res, errors.New("exec: a terminal command needs an argv")
	}
	target := req.Namespace + "/" + req.Pod
	if req.Container != "" {
		target += " container " + req.Container
	}
	u := e.ttyURLFor(&req)
	red := newRedactor(u, nil)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	size := req.Size
	if size.Width == 0 || size.Height == 0 {
		size = DefaultTerminalSize
	}
	out := &outputWriter{f: req.Output}
	var used atomic.Value
	used.Store("")
	sx, err := e.streamExecutor(u, &used)
	if err != nil {
		return res, newTransportError(target, err, red)
	}
	var stdin io.Reader
	var stdinGuard *guardedReader
	if req.Stdin != nil {
		stdinGuard = &guardedReader{r: req.Stdin}
		stdin = stdinGuard
	}
	streamErr := sx.StreamWithContext(runCtx, remotecommand.StreamOptions{
		Stdin:             stdin,
		Stdout:            out,
		Tty:               true,
		TerminalSizeQueue: &sizeQueue{first: size, resize: req.Resize, done: runCtx.Done()},
	})
	if stdinGuard != nil {
		stdinGuard.stop()
	}
	out.close()
	res.Transport = used.Load().(string)
	res.Duration = time.Since(start)
	var codeErr utilexec.CodeExitError
	switch {
	case streamErr == nil:
		res.ExitCode = intPtr(0)
	case errors.As(streamErr, &codeErr):
		res.ExitCode = intPtr(codeErr.Code)
	case ctx.Err() != nil:
		return res, fmt.Errorf("exec %s: %w", target, ctx.Err())
	default:
		return res, newTransportError(target, streamErr, red)
	}
	return res, nil
}

// ttyURL is the exec URL of a terminal command: stdout only (a terminal
// merges stderr into it), stdin when there is a keyboard.
func (e *Executor) ttyURL(req *TTYRequest) *url.URL {
	return e.client.Post().
		Namespace(req.Namespace).Resource("pods").Name(req.Pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: req.Container,
			Command:   req.Argv,
			Stdin:     req.Stdin != nil,
			Stdout:    true,
			TTY:       true,
		}, scheme.ParameterCodec).
		URL()
}
