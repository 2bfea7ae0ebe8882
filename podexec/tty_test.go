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
		scr := newScreen()
		kbd, typed := io.Pipe()
		defer typed.Close()
		done := make(chan struct{})
		var res *TTYResult
		var err error
		go func() {
			defer close(done)
			res, err = tg.executor(t, tr).RunTTY(ctx, TTYRequest{
				Namespace: tg.ns, Pod: tg.pod, Container: tg.container,
				Argv:   []string{"/bin/sh", "-c", `[ -t 0 ] && [ -t 1 ] && echo "on a terminal"; stty size; printf 'code: ABCD-12345\nline? '; read line; echo "got:$line."; exit 3`},
				Stdin:  kbd,
				Output: scr.write,
				Size:   TerminalSize{Width: 132, Height: 43},
			})
		}()
		is.NoErr(scr.waitFor(ctx, "line? "))
		_, werr := typed.Write([]byte("hello\r"))
		is.NoErr(werr)
		<-done
		is.NoErr(err)
		out := scr.String()
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
		scr := newScreen()
		kbd, typed := io.Pipe()
		defer typed.Close()
		done := make(chan struct{})
		var res *TTYResult
		var err error
		go func() {
			defer close(done)
			res, err = tg.executor(t, tr).RunTTY(ctx, TTYRequest{
				Namespace: tg.ns, Pod: tg.pod, Container: tg.container,
				Argv:  []string{"/bin/sh", "-c", "echo waiting; exec sleep 1000"},
				Stdin: kbd, Output: scr.write,
			})
		}()
		is.NoErr(scr.waitFor(ctx, "waiting"))
		_, werr := typed.Write([]byte{3})
		is.NoErr(werr)
		<-done
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
	scr := newScreen()
	kbd, typed := io.Pipe()
	defer typed.Close()
	done := make(chan struct{})
	var res *TTYResult
	var err error
	go func() {
		defer close(done)
		res, err = tn.ttyExecutor(t, TransportWebSocket).RunTTY(ctx, TTYRequest{
			Namespace: testNS, Pod: testPod, Container: testContainer,
			Argv: []string{"/bin/sh", "-c", "echo waiting; exec sleep 1000"}, Stdin: kbd, Output: scr.write,
		})
	}()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	is.NoErr(scr.waitFor(wctx, "waiting"))
	cancel()
	<-done
	is.True(err != nil)
	is.True(res.ExitCode == nil)
}
