// Package podexec runs the host's commands in a workload pod through the API
// server's pods/exec subresource (k8s.io/client-go/tools/remotecommand).
//
// Transport: WebSocket with the v5.channel.k8s.io protocol first (it can
// half-close stdin, so stdin is streamed and closed for real; no `head -c`
// rewriting), falling back to SPDY when the upgrade fails, exactly as kubectl
// does (remotecommand.NewFallbackExecutor with httpstream.IsUpgradeFailure ||
// httpstream.IsHTTPSProxyError). SPDY half-closes stdin too.
//
// Secrets: Request.Env values and Request.Stdin are treated as secret. This
// package writes no logs, and every error it returns is scrubbed of the exec
// URL's query and of every env value of 4 bytes or more (raw and in the
// usual encodings); stdin is never put into an error. Env values do not
// travel in the argv (which is in the exec URL, so in API server audit logs,
// and in /proc/<pid>/cmdline in the pod): they go first on the command's
// stdin and the wrapper shell reads them from there (see BuildCommand).
package podexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

// Transport selects the streaming protocol.
type Transport int

const (
	// TransportAuto tries WebSocket (v5.channel.k8s.io) and falls back to
	// SPDY when the server cannot upgrade to it.
	TransportAuto Transport = iota
	// TransportWebSocket uses only WebSocket v5.channel.k8s.io.
	TransportWebSocket
	// TransportSPDY uses only SPDY (v4.channel.k8s.io and older).
	TransportSPDY
)

func (t Transport) String() string {
	switch t {
	case TransportAuto:
		return "auto"
	case TransportWebSocket:
		return "websocket"
	case TransportSPDY:
		return "spdy"
	}
	return fmt.Sprintf("Transport(%d)", int(t))
}

const (
	// MaxChunk is the largest chunk passed to Request.OnOutput.
	MaxChunk = 1_000_000
	// DefaultMaxOutput is the per-stream cap used when MaxStdout or
	// MaxStderr is 0.
	DefaultMaxOutput = 32 << 20
)

// Request is one command to run in a container.
type Request struct {
	Namespace string
	Pod       string
	// Container may be empty when the pod has a single container.
	Container string

	// Command and Args: see BuildCommand. Command alone runs
	// `/bin/sh -lc Command`; Command with Args runs that argv.
	Command string
	Args    []string
	// Env is exported for the command (see BuildCommand for the names that
	// are skipped). Values are secret.
	Env map[string]string
	// Cwd is the working directory (default: the container's).
	Cwd string

	// Stdin, if non-nil, is streamed to the command and closed at EOF.
	// Its content is secret. If the command exits before reading all of it,
	// Run does not wait for Stdin; a Read already in progress at that point
	// may still complete later, after which Stdin is no longer read.
	Stdin io.Reader

	// Timeout bounds the whole call (0: no timeout beyond ctx). When it
	// expires the streams are torn down and the Result has TimedOut set and
	// no ExitCode. Through a real kubelet the process inside the container
	// is usually NOT killed by this: Kubernetes does not kill exec
	// processes whose client went away (kubernetes/kubernetes#89031). The
	// caller should bound long commands inside the pod too (e.g. timeout(1))
	// if that matters.
	Timeout time.Duration

	// MaxStdout and MaxStderr cap the bytes kept per stream: 0 means
	// DefaultMaxOutput, a negative value means no cap. Exceeding a cap
	// fails closed: the streams are torn down and Run returns an
	// *OutputLimitError. MaxStdout does not apply when Stdout is set.
	MaxStdout, MaxStderr int64

	// Stdout, if non-nil, receives the command's stdout as it arrives
	// instead of the Result: nothing of stdout is buffered, capped or
	// passed to OnOutput, and Result.Stdout stays empty. Writes are
	// serialised and none happen after Run returns. A write error stops
	// the command: the streams are torn down and Run returns a
	// *StdoutWriteError wrapping it. For large outputs (file transfers).
	Stdout io.Writer

	// OnOutput, if set, is called with output as it arrives, stream being
	// "stdout" or "stderr", in chunks of at most MaxChunk bytes. Calls are
	// serialised (never concurrent) and none happen after Run returns. The
	// chunk aliases the Result's buffer: it stays valid after the call but
	// must not be modified. A slow callback slows the command's output.
	OnOutput func(stream string, chunk []byte)
}

// Result is the outcome of a command.
type Result struct {
	// ExitCode is nil when the command's exit status is unknown (timeout).
	ExitCode *int
	// Signal is "SIGKILL" for exit code 137 and "SIGTERM" for 143, which is
	// how the exec API reports a process killed by those signals (inferred:
	// the API reports no signal, and a program may exit 137 itself).
	Signal   string
	TimedOut bool
	// Stdout and Stderr hold the raw bytes. Stderr ends with a one-line
	// "[paperclip-k8s] ..." hint after exit codes 137/143 and timeouts.
	Stdout, Stderr []byte
	Duration       time.Duration
	// SkippedEnv lists the Env names that were not exported (names only).
	SkippedEnv []string
	// Transport is the protocol that carried the command: "websocket" or
	// "spdy" (empty if no connection was made).
	Transport string
}

// OutputLimitError reports a stream that exceeded its cap.
type OutputLimitError struct {
	Stream string // "stdout" or "stderr"
	Limit  int64
}

func (e *OutputLimitError) Error() string {
	field := "MaxStdout"
	if e.Stream == "stderr" {
		field = "MaxStderr"
	}
	return fmt.Sprintf("exec: %s exceeded the %s cap of %d bytes; the command was stopped", e.Stream, field, e.Limit)
}

// StdoutWriteError reports that Request.Stdout failed a write; the command
// was stopped.
type StdoutWriteError struct {
	Err error
}

func (e *StdoutWriteError) Error() string {
	return "exec: writing the command's stdout: " + e.Err.Error() + "; the command was stopped"
}

func (e *StdoutWriteError) Unwrap() error { return e.Err }

// ErrTransport wraps failures to run the command or to learn its outcome
// (connection, upgrade, API errors such as a missing pod, runtime errors).
// The error returned is a *TransportError.
var ErrTransport = errors.New("exec: transport failure")

// TransportError is the error for transport failures; it matches ErrTransport
// with errors.Is. Its text is scrubbed of secrets (see the package doc).
type TransportError struct {
	msg string
	// Status is the API server's status when it refused the exec before the
	// stream started and the transport reported it as one (WebSocket does;
	// client-go's SPDY path returns only the message), e.g. NotFound for a
	// missing pod: apierrors.IsNotFound(err) works on the returned error.
	// Its messages are scrubbed too.
	Status *apierrors.StatusError
}

func (e *TransportError) Error() string { return e.msg }

func (e *TransportError) Unwrap() []error {
	if e.Status != nil {
		return []error{ErrTransport, e.Status}
	}
	return []error{ErrTransport}
}

func newTransportError(target string, err error, red *redactor) *TransportError {
	te := &TransportError{msg: ErrTransport.Error() + ": " + target + ": " + red.scrub(err.Error())}
	var se *apierrors.StatusError
	if errors.As(upgradeCause(err), &se) {
		st := se.ErrStatus
		st.Message = red.scrub(st.Message)
		if st.Details != nil {
			d := *st.Details
			d.Name = red.scrub(d.Name)
			d.Causes = append([]metav1.StatusCause(nil), d.Causes...)
			for i := range d.Causes {
				d.Causes[i].Message = red.scrub(d.Causes[i].Message)
			}
			st.Details = &d
		}
		te.Status = &apierrors.StatusError{ErrStatus: st}
	}
	return te
}

var errTimedOut = errors.New("exec: timed out")

// Options configure an Executor.
type Options struct {
	Transport Transport
}

// Executor runs commands in pods. It is safe for concurrent use.
type Executor struct {
	config    *rest.Config
	transport Transport
	client    rest.Interface
	// urlFor builds the exec URL; tests point it straight at an execnode.
	urlFor func(req *Request, argv []string) (*url.URL, error)
	// ttyURLFor is urlFor for RunTTY (tty.go).
	ttyURLFor func(req *TTYRequest) *url.URL
}

// NewExecutor returns an Executor for the API server in config.
func NewExecutor(config *rest.Config, opts Options) (*Executor, error) {
	if config == nil {
		return nil, errors.New("exec: nil rest.Config")
	}
	switch opts.Transport {
	case TransportAuto, TransportWebSocket, TransportSPDY:
	default:
		return nil, fmt.Errorf("exec: unknown transport %v", opts.Transport)
	}
	c := rest.CopyConfig(config)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	e := &Executor{config: c, transport: opts.Transport, client: rc}
	e.urlFor = e.podExecURL
	e.ttyURLFor = e.ttyURL
	return e, nil
}

func (e *Executor) podExecURL(req *Request, argv []string) (*url.URL, error) {
	return e.client.Post().
		Namespace(req.Namespace).Resource("pods").Name(req.Pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: req.Container,
			Command:   argv,
			Stdin:     req.Stdin != nil,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec).
		URL(), nil
}

// streamExecutor returns a remotecommand executor for u; *used is set to
// the transport that carries the stream.
func (e *Executor) streamExecutor(u *url.URL, used *atomic.Value) (remotecommand.Executor, error) {
	switch e.transport {
	case TransportSPDY:
		used.Store("spdy")
		return remotecommand.NewSPDYExecutor(e.config, "POST", u)
	case TransportWebSocket:
		used.Store("websocket")
		// WebSocket upgrades must be GET (RFC 6455 §4.1).
		return remotecommand.NewWebSocketExecutor(e.config, "GET", u.String())
	}
	ws, err := remotecommand.NewWebSocketExecutor(e.config, "GET", u.String())
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(e.config, "POST", u)
	if err != nil {
		return nil, err
	}
	used.Store("websocket")
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		// kubectl's predicate, except that an API server NotFound (pod or
		// namespace missing) is final: SPDY would fail the same way, and
		// only the WebSocket path keeps the status for the caller.
		if apierrors.IsNotFound(upgradeCause(err)) {
			return false
		}
		fallback := httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		if fallback {
			used.Store("spdy")
		}
		return fallback
	})
}

// Run runs req and waits for it to finish.
//
// A non-nil error means the outcome is unknown or unusable: an invalid
// request, a transport failure (wrapping ErrTransport), an exceeded output
// cap (*OutputLimitError) or ctx being done (wrapping ctx.Err()). A non-zero
// exit status and a timeout are not errors. The returned Result is never nil;
// on error it carries what is known (Duration, partial output, Transport).
func (e *Executor) Run(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	res := &Result{}
	cmd, err := BuildCommand(req.Command, req.Args, req.Env, req.Cwd)
	res.SkippedEnv = cmd.Skipped
	if err != nil {
		return res, err
	}
	argv := cmd.Argv
	if len(cmd.Preamble) > 0 {
		// The environment goes first on stdin (see BuildCommand).
		rest := req.Stdin
		if rest == nil {
			rest = bytes.NewReader(nil)
		}
		req.Stdin = io.MultiReader(bytes.NewReader(cmd.Preamble), rest)
	}
	if req.Namespace == "" || req.Pod == "" {
		return res, errors.New("exec: namespace and pod are required")
	}
	target := req.Namespace + "/" + req.Pod
	if req.Container != "" {
		target += " container " + req.Container
	}
	u, err := e.urlFor(&req, argv)
	if err != nil {
		return res, fmt.Errorf("exec %s: %w", target, err)
	}
	red := newRedactor(u, req.Env)

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if req.Timeout > 0 {
		var cancelT context.CancelFunc
		runCtx, cancelT = context.WithTimeoutCause(runCtx, req.Timeout, errTimedOut)
		defer cancelT()
	}

	out := &sink{onOutput: req.OnOutput, cancel: cancel}
	stdout := &streamBuffer{sink: out, name: "stdout", max: capOf(req.MaxStdout)}
	stderr := &streamBuffer{sink: out, name: "stderr", max: capOf(req.MaxStderr)}
	var stdoutW io.Writer = stdout
	var direct *directWriter
	if req.Stdout != nil {
		direct = &directWriter{dst: req.Stdout, cancel: cancel}
		stdoutW = direct
	}
	var stdin io.Reader
	var stdinGuard *guardedReader
	if req.Stdin != nil {
		stdinGuard = &guardedReader{r: req.Stdin}
		stdin = stdinGuard
	}

	var used atomic.Value
	used.Store("")
	sx, err := e.streamExecutor(u, &used)
	if err != nil {
		return res, newTransportError(target, err, red)
	}
	streamErr := sx.StreamWithContext(runCtx, remotecommand.StreamOptions{
		Stdin:  stdin,
		Stdout: stdoutW,
		Stderr: stderr,
	})
	if stdinGuard != nil {
		stdinGuard.stop()
	}
	limitErr := out.close()
	if direct != nil {
		if werr := direct.close(); werr != nil && limitErr == nil {
			limitErr = werr
		}
	}
	res.Transport = used.Load().(string)
	res.Stdout, res.Stderr = stdout.buf, stderr.buf
	res.Duration = time.Since(start)

	var codeErr utilexec.CodeExitError
	switch {
	case limitErr != nil:
		return res, limitErr
	case streamErr == nil:
		res.ExitCode = intPtr(0)
	case errors.As(streamErr, &codeErr):
		res.ExitCode = intPtr(codeErr.Code)
		switch codeErr.Code {
		case 137:
			res.Signal = "SIGKILL"
			res.Stderr = appendHint(res.Stderr, "[paperclip-k8s] exit code 137: the command was killed by SIGKILL, most often because the container hit its memory limit (OOMKilled) or the pod is being killed; the exec API reports no signal, so this is inferred from the exit code.")
		case 143:
			res.Signal = "SIGTERM"
			res.Stderr = appendHint(res.Stderr, "[paperclip-k8s] exit code 143: the command was terminated by SIGTERM, usually because the pod is shutting down (deleted, evicted or preempted); the exec API reports no signal, so this is inferred from the exit code.")
		}
	case ctx.Err() != nil:
		return res, fmt.Errorf("exec %s: %w", target, ctx.Err())
	case runCtx.Err() != nil && errors.Is(context.Cause(runCtx), errTimedOut):
		res.TimedOut = true
		res.Stderr = appendHint(res.Stderr, fmt.Sprintf("[paperclip-k8s] timed out after %v; the exec stream was closed.", req.Timeout))
	default:
		return res, newTransportError(target, streamErr, red)
	}
	if req.OnOutput != nil && len(res.Stderr) > len(stderr.buf) {
		req.OnOutput("stderr", res.Stderr[len(stderr.buf):len(res.Stderr):len(res.Stderr)])
	}
	return res, nil
}

// upgradeCause returns the cause inside an *httpstream.UpgradeFailureError
// (which has no Unwrap method), or err itself.
func upgradeCause(err error) error {
	var ufe *httpstream.UpgradeFailureError
	if errors.As(err, &ufe) && ufe.Cause != nil {
		return ufe.Cause
	}
	return err
}

func intPtr(i int) *int { return &i }

func capOf(v int64) int64 {
	switch {
	case v == 0:
		return DefaultMaxOutput
	case v < 0:
		return -1
	}
	return v
}

func appendHint(stderr []byte, hint string) []byte {
	if len(stderr) > 0 && stderr[len(stderr)-1] != '\n' {
		stderr = append(stderr, '\n')
	}
	return append(append(stderr, hint...), '\n')
}
