package podexec

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

// ttyKubeletURL is the URL the API server would proxy a terminal exec to.
func (tn *testNode) ttyKubeletURL(req *TTYRequest) *url.URL {
	q := url.Values{}
	for _, a := range req.Argv {
		q.Add("command", a)
	}
	if req.Stdin != nil {
		q.Set("input", "1")
	}
	q.Set("output", "1")
	q.Set("tty", "1")
	return &url.URL{
		Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", tn.port),
		Path:     "/exec/" + req.Namespace + "/" + req.Pod + "/" + req.Container,
		RawQuery: q.Encode(),
	}
}

func (tn *testNode) ttyExecutor(tb testing.TB, tr Transport) *Executor {
	e := tn.executor(tb, tr)
	e.ttyURLFor = tn.ttyKubeletURL
	return e
}

// screen collects a terminal's output and lets a test wait for a text in
// it (no sleeps: the wait ends when the output arrives).
type screen struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{}
}

func newScreen() *screen { return &screen{changed: make(chan struct{})} }

func (s *screen) write(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Write(p)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until the output contains want, or ctx ends.
func (s *screen) waitFor(ctx context.Context, want string) error {
	for {
		s.mu.Lock()
		got, ch := s.b.String(), s.changed
		s.mu.Unlock()
		if strings.Contains(got, want) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("the terminal never printed %q; it printed %q", want, got)
		}
	}
}

// ttyRun is a terminal command running in the background: its screen,
// the keyboard to type on, and wait for its result.
type ttyRun struct {
	scr   *screen
	typed *io.PipeWriter
	done  chan struct{}
	res   *TTYResult
	err   error
}

// startTTY runs req on e in the background, its Stdin a keyboard the
// test types on and its Output a screen the test waits on; the keyboard
// is closed when the test ends.
func startTTY(tb testing.TB, ctx context.Context, e *Executor, req TTYRequest) *ttyRun {
	kbd, typed := io.Pipe()
	tb.Cleanup(func() { typed.Close() })
	r := &ttyRun{scr: newScreen(), typed: typed, done: make(chan struct{})}
	req.Stdin, req.Output = kbd, r.scr.write
	go func() {
		defer close(r.done)
		r.res, r.err = e.RunTTY(ctx, req)
	}()
	return r
}

// wait waits for the command to end and returns its result.
func (r *ttyRun) wait() (*TTYResult, error) {
	<-r.done
	return r.res, r.err
}

// ttyTarget is where testTTY runs its commands.
type ttyTarget struct {
	executor           func(testing.TB, Transport) *Executor
	ns, pod, container string
}

// TestRunTTY: testTTY straight against an execnode (no API server).
func TestRunTTY(t *testing.T) {
	tn := startTestNode(t, execnode.Options{})
	tg := ttyTarget{executor: tn.ttyExecutor, ns: testNS, pod: testPod, container: testContainer}
	for _, tr := range []Transport{TransportWebSocket, TransportSPDY} {
		t.Run(tr.String(), func(t *testing.T) { testTTY(t, tg, tr, tr.String()) })
	}
}

// testTTY: a command on a terminal sees a terminal of the requested size,
// prints a prompt, reads the line typed on the keyboard (a carriage
// return, as a terminal sends it) and exits with its status; Ctrl-C
// interrupts it (SIGINT through the terminal's line discipline: 130).
func testTTY(t *testing.T, tg ttyTarget, tr Transport, wantTransport string) {
	t.Run("prompt and line", func(t *testing.T) {
		is := is.New(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		run := startTTY(t, ctx, tg.executor(t, tr), TTYRequest{
			Namespace: tg.ns, Pod: tg.pod, Container: tg.container,
			Argv: []string{"/bin/sh", "-c", `[ -t 0 ] && [ -t 1 ] && echo "on a terminal"; while [ "$(stty size)" = "0 0" ]; do sleep 0.01; done; stty size; printf 'code: ABCD-12345\nline? '; read line; echo "got:$line."; exit 3`},
			Size: TerminalSize{Width: 132, Height: 43},
		})
		// The terminal's size travels apart from the command's start (a
		// resize message, as on a kubelet): the command waits until it is set.
		is.NoErr(run.scr.waitFor(ctx, "line? "))
		_, werr := run.typed.Write([]byte("hello\r"))
		is.NoErr(werr)
		res, err := run.wait()
		is.NoErr(err)
		out := run.scr.String()
		t.Logf("%s: %q", res.Transport, out)
		is.Equal(res.Transport, wantTransport)
		is.True(res.ExitCode != nil && *res.ExitCode == 3)
		is.True(strings.Contains(out, "on a terminal"))
		is.True(strings.Contains(out, "43 132"))
		is.True(strings.Contains(out, "got:hello."))
	})
	t.Run("ctrl-c", func(t *testing.T) {
		is := is.New(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		run := startTTY(t, ctx, tg.executor(t, tr), TTYRequest{
			Namespace: tg.ns, Pod: tg.pod, Container: tg.container,
			Argv: []string{"/bin/sh", "-c", "echo waiting; exec sleep 1000"},
		})
		is.NoErr(run.scr.waitFor(ctx, "waiting"))
		_, werr := run.typed.Write([]byte{3})
		is.NoErr(werr)
		res, err := run.wait()
		is.NoErr(err)
		is.True(res.ExitCode != nil)
		is.Equal(*res.ExitCode, 130) // 128 + SIGINT
	})
}

// TestRunTTYCancel: ctx ending tears the stream down: no exit code, ctx's
// error, and the command is killed.
func TestRunTTYCancel(t *testing.T) {
	is := is.New(t)
	tn := startTestNode(t, execnode.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := startTTY(t, ctx, tn.ttyExecutor(t, TransportWebSocket), TTYRequest{
		Namespace: testNS, Pod: testPod, Container: testContainer,
		Argv: []string{"/bin/sh", "-c", "echo waiting; exec sleep 1000"},
	})
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	is.NoErr(run.scr.waitFor(wctx, "waiting"))
	cancel()
	res, err := run.wait()
	is.True(err != nil)
	is.True(res.ExitCode == nil)
}
