package plugin

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// gateKeyboard is a terminal keyboard the test controls: its first write
// blocks until release is closed (or the keyboard is), every write is
// announced on entered when it begins and on wrote when it ends, and
// writes that overlap are recorded. fail, if set, is what writes return.
type gateKeyboard struct {
	entered, wrote chan string
	release        chan struct{}
	fail           error

	mu      sync.Mutex
	started []string
	typed   strings.Builder
	active  int
	overlap bool
	closed  chan struct{}
	once    sync.Once
}

func newGateKeyboard() *gateKeyboard {
	return &gateKeyboard{entered: make(chan string, 64), wrote: make(chan string, 64),
		release: make(chan struct{}), closed: make(chan struct{})}
}

func (k *gateKeyboard) Write(p []byte) (int, error) {
	k.mu.Lock()
	k.started = append(k.started, string(p))
	first := len(k.started) == 1
	k.active++
	k.overlap = k.overlap || k.active > 1
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.active--
		k.mu.Unlock()
	}()
	k.entered <- string(p)
	if k.fail != nil {
		return 0, k.fail
	}
	if first {
		select {
		case <-k.release:
		case <-k.closed:
			return 0, io.ErrClosedPipe
		}
	}
	k.mu.Lock()
	k.typed.Write(p)
	k.mu.Unlock()
	k.wrote <- string(p)
	return len(p), nil
}

func (k *gateKeyboard) Close() error {
	k.once.Do(func() { close(k.closed) })
	return nil
}

func (k *gateKeyboard) startedWrites() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.started...)
}

// keyboardSession is a provider with one open terminal typing on kb; its
// context ends when the session's stream is torn down, notes receives
// what it sends the host.
func keyboardSession(t *testing.T, kb io.WriteCloser) (p *Provider, s *loginSession, stream context.Context, notes chan string) {
	p = &Provider{}
	p.login.init()
	stream, cancel := context.WithCancel(context.Background())
	notes = make(chan string, 16)
	s = &loginSession{id: "k8s-login-test", hostRouteID: "route-test", keyboard: kb, cancel: cancel, done: make(chan struct{}),
		notify: func(method string, params any) {
			if method == rpc.MethodLoginPtyOutput {
				notes <- params.(map[string]any)["chunk"].(string)
			}
		}}
	p.login.sessions[s.id] = s
	p.login.routes[s.hostRouteID] = s
	t.Cleanup(func() { s.closeKeyboard(nil); cancel() })
	return p, s, stream, notes
}

// A keystroke whose write is slow (its call's context ends while the
// terminal has not taken it) is not overtaken: the next keystrokes wait
// behind it and the terminal sees them in arrival order, one write at a
// time, once it reads again.
func TestLoginPtyInputKeepsOrderBehindASlowWrite(t *testing.T) {
	is := is.New(t)
	kb := newGateKeyboard()
	p, s, _, _ := keyboardSession(t, kb)
	input := func(ctx context.Context, data string) error {
		_, err := p.LoginPtyInput(ctx, LoginPtyInputParams{WorkerSessionID: s.id, Data: data})
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- input(ctx, "a") }()
	is.Equal(<-kb.entered, "a") // its write is in progress, and blocked
	cancel()                    // its call gives up on it
	firstErr := <-first
	is.NoErr(input(context.Background(), "b"))
	is.NoErr(input(context.Background(), "c"))
	is.Equal(kb.startedWrites(), []string{"a"}) // b and c wait behind a

	close(kb.release)
	for _, want := range []string{"a", "b", "c"} {
		is.Equal(<-kb.wrote, want)
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	is.Equal(kb.typed.String(), "abc")
	is.True(!kb.overlap)
	is.NoErr(firstErr) // it was in the type-ahead, and it was typed
}

// A Ctrl-C (stop) whose wait ends before the terminal takes it is still
// typed in its place: a keystroke given after it does not overtake it.
func TestLoginPtyInterruptKeepsItsPlace(t *testing.T) {
	is := is.New(t)
	kb := newGateKeyboard()
	p, s, _, _ := keyboardSession(t, kb)
	is.NoErr(s.typeKeys([]byte("a"), nil))
	is.Equal(<-kb.entered, "a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.write(ctx, []byte{3})
	is.True(errors.Is(err, context.Canceled))
	_, err = p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: s.id, Data: "b"})
	is.NoErr(err)
	is.Equal(kb.startedWrites(), []string{"a"})
	close(kb.release)
	for _, want := range []string{"a", "\x03", "b"} {
		is.Equal(<-kb.wrote, want)
	}
}

// A terminal that stops reading fails its input once maxLoginTypeAhead
// bytes wait: the input that does not fit and everything after it is
// refused (never typed after a hole), the write in progress is ended, the
// operator is told in the terminal, and a stop ends the stream (no Ctrl-C
// can be typed any more).
func TestLoginPtyInputFailsWhenTheTerminalStopsReading(t *testing.T) {
	is := is.New(t)
	kb := newGateKeyboard()
	p, s, stream, notes := keyboardSession(t, kb)
	input := func(data string) error {
		_, err := p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: s.id, Data: data})
		return err
	}
	is.NoErr(input("a"))
	is.Equal(<-kb.entered, "a")
	chunk := strings.Repeat("x", maxLoginInput)
	accepted := 0
	var err error
	for err == nil {
		if err = input(chunk); err == nil {
			accepted++
		}
	}
	is.Equal(accepted, (maxLoginTypeAhead-1)/maxLoginInput) // the type-ahead was full
	var ta *loginTypeAheadError
	is.True(errors.As(err, &ta))
	is.True(strings.Contains(err.Error(), "login terminal "+s.id+" has not read the"))
	is.True(strings.Contains(err.Error(), "cancel the login and start it again"))
	is.Equal(<-notes, loginTypeAheadNote)
	<-kb.closed // the write in progress is ended

	err = input("z")
	is.True(errors.As(err, &ta)) // refused for good
	_, err = p.LoginPtyStop(context.Background(), LoginPtyStopParams{WorkerSessionID: s.id})
	is.True(err != nil && strings.Contains(err.Error(), "stream was ended instead of Ctrl-C"))
	<-stream.Done()
	is.Equal(kb.startedWrites(), []string{"a"}) // nothing after it reached the keyboard
	s.kmu.Lock()
	defer s.kmu.Unlock()
	is.Equal(len(s.typeAhead), 0) // dropped
}

// Stop decides whether the terminal has ended by the sentinel error, not
// by the text of whatever typing Ctrl-C returned: a keyboard failure that
// merely says "has ended" is reported (and the stream ended, so that the
// command still ends), a terminal whose command ended is stopped quietly.
func TestLoginPtyStopKnowsAnEndedTerminalByItsError(t *testing.T) {
	t.Run("a keyboard failure whose text says has ended", func(t *testing.T) {
		is := is.New(t)
		kb := newGateKeyboard()
		kb.fail = errors.New("the exec stream has ended unexpectedly")
		p, s, stream, _ := keyboardSession(t, kb)
		_, err := p.LoginPtyStop(context.Background(), LoginPtyStopParams{WorkerSessionID: s.id})
		is.True(err != nil)
		is.True(!errors.Is(err, errLoginEnded))
		is.True(strings.Contains(err.Error(), "typing on the terminal failed"))
		<-stream.Done()
	})
	t.Run("a terminal whose command ended", func(t *testing.T) {
		is := is.New(t)
		kr, kw := io.Pipe()
		is.NoErr(kr.Close()) // the command's stream is gone
		p, s, stream, _ := keyboardSession(t, kw)
		_, err := p.LoginPtyStop(context.Background(), LoginPtyStopParams{WorkerSessionID: s.id})
		is.NoErr(err)
		is.NoErr(stream.Err()) // nothing to end
		err = s.write(context.Background(), []byte("x"))
		is.True(errors.Is(err, errLoginEnded))
	})
}
