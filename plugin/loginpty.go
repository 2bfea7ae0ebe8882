package plugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// The login terminal (loginPtyOpen, loginPtyInput, loginPtyStop,
// loginPtyClose): the host logs an agent CLI into its subscription inside a
// lease's pod, over a terminal (podexec.RunTTY). The host picks one of a
// closed set of command keys; the command itself is this file's, never the
// host's. The session's output goes to the host as loginPty.output
// notifications and its end as one loginPty.exit.
//
// The host's params carry no config: the lease must have been acquired or
// resumed through this worker, which remembers the config, company and
// environment it was acquired with (loginLeaseHook). What the session may
// touch is derived from those again (leaseTarget: the company's tenant
// namespace, a run name; readyPod: the workload's labels and UID, the
// pod's UID), never from the host's lease metadata alone.

const (
	// loginDriverKey is the only driver a login terminal is opened for.
	loginDriverKey = "kubernetes"
	// maxLoginSessions and maxLoginSessionsPerCompany cap the open
	// terminals of the worker and of one company.
	maxLoginSessions           = 16
	maxLoginSessionsPerCompany = 4
	// maxLoginInput caps one loginPtyInput's data.
	maxLoginInput = 64 << 10
	// maxLoginChunk caps one loginPty.output chunk (the host takes up to
	// 1,000,000 characters).
	maxLoginChunk = 64 << 10
	// maxLoginOutput caps a session's output (the host takes 8 MiB, then
	// closes the route): past it the session is stopped.
	maxLoginOutput = 4 << 20
	// loginOpenBudget bounds the wait for the lease's pod in loginPtyOpen
	// (the host waits 30 s for the reply).
	loginOpenBudget = 25 * time.Second
	// maxLoginLeases bounds the leases remembered for login terminals.
	maxLoginLeases = 4096
	// loginInterruptGrace bounds the Ctrl-C typed before a terminal's
	// stream is torn down (a stream that reads no more input), and the
	// Ctrl-C of a stop.
	loginInterruptGrace = 5 * time.Second
	// maxLoginTypeAhead caps what was typed on a terminal and not read by
	// it yet: past it the terminal's input fails (loginTypeAheadError).
	maxLoginTypeAhead = 1 << 20
)

// loginSessionHome is the exact form of the host's sessionHome (a UUID
// under the host's fixed root): nothing else is accepted, so it can be
// quoted into the command safely.
var loginSessionHome = regexp.MustCompile(`^/tmp/paperclip-adapter-login/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// loginCommands maps the host's loginCommandKey to the command line run in
// the pod, given the session home: the same commands as the host's
// adapters and the reference plugin.
var loginCommands = map[string]func(home string) string{
	"claude": func(string) string { return "exec claude setup-token" },
	"codex":  func(home string) string { return "exec env CODEX_HOME='" + home + "' codex login --device-auth" },
	"grok":   func(home string) string { return "exec env GROK_HOME='" + home + "' grok login --device-auth" },
}

// loginArgv is the argv of a login terminal: the session home is created
// private (umask 077: the credential file the CLI writes there is the
// owner's only, as the host's read requires), then the CLI replaces the
// shell.
func loginArgv(key, home string) []string {
	return []string{"/bin/sh", "-c", "umask 077 && mkdir -p '" + home + "' && " + loginCommands[key](home)}
}

// loginCommandKeys lists the accepted keys, for errors.
func loginCommandKeys() []string {
	keys := make([]string, 0, len(loginCommands))
	for k := range loginCommands {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// LoginPtyOpenParams are loginPtyOpen's params.
type LoginPtyOpenParams struct {
	HostRouteID     string `json:"hostRouteId"`
	DriverKey       string `json:"driverKey"`
	CompanyID       string `json:"companyId"`
	EnvironmentID   string `json:"environmentId"`
	ProviderLeaseID string `json:"providerLeaseId"`
	LoginCommandKey string `json:"loginCommandKey"`
	SessionHome     string `json:"sessionHome"`
}

// LoginPtyOpenResult is loginPtyOpen's result.
type LoginPtyOpenResult struct {
	WorkerSessionID string `json:"workerSessionId"`
}

// LoginPtyInputParams are loginPtyInput's params (data is keystrokes: secret).
type LoginPtyInputParams struct {
	WorkerSessionID string `json:"workerSessionId"`
	Data            string `json:"data"`
}

// LoginPtyStopParams are loginPtyStop's params.
type LoginPtyStopParams struct {
	WorkerSessionID string `json:"workerSessionId"`
}

// LoginPtyCloseParams are loginPtyClose's params.
type LoginPtyCloseParams struct {
	HostRouteID     string  `json:"hostRouteId"`
	WorkerSessionID *string `json:"workerSessionId,omitempty"`
}

// LoginPtyCloseResult is loginPtyClose's result: the host's route id, its
// proof that the terminal is gone.
type LoginPtyCloseResult struct {
	HostRouteID string `json:"hostRouteId"`
}

// loginLease is what the worker remembers of a lease it acquired or
// resumed, for login terminals.
type loginLease struct {
	base       BaseParams // config, company and environment of the acquire
	metadata   map[string]any
	expiresAt  time.Time // zero: none
	remembered time.Time
}

// loginSession is one open terminal.
type loginSession struct {
	id, hostRouteID, leaseID, companyID, key string

	// keyboard is the terminal's input; only the session's typist writes
	// it, one write at a time, in the order the input was given (typeKeys).
	keyboard io.WriteCloser
	cancel   context.CancelFunc
	done     chan struct{}
	notify   func(method string, params any)

	mu     sync.Mutex
	closed bool // the host closed it: nothing more is sent
	sent   int
	carry  []byte // an incomplete UTF-8 sequence at the end of the last read

	kmu       sync.Mutex
	typeAhead []keystrokes // given, not handed to the keyboard yet, in order
	pending   int          // bytes of typeAhead and of the write in progress
	typing    bool         // the typist runs
	kerr      error        // non-nil: the input has failed, nothing more is typed
}

// keystrokes are one input for the keyboard; typed, if set, receives the
// outcome of its write.
type keystrokes struct {
	data  []byte
	typed chan error
}

// loginTerminals holds the remembered leases and the open sessions.
type loginTerminals struct {
	mu       sync.Mutex
	leases   map[string]*loginLease
	sessions map[string]*loginSession // by workerSessionId
	routes   map[string]*loginSession // by hostRouteId
	// reserved counts opens in progress, per company ("" the total).
	reserved map[string]int
	// run starts a terminal command and notify sends a notification
	// (tests replace them).
	run    func(ctx context.Context, cl *cluster, req podexec.TTYRequest) (*podexec.TTYResult, error)
	notify func(ctx context.Context, method string, params any)
}

func (lt *loginTerminals) init() {
	if lt.leases == nil {
		lt.leases = map[string]*loginLease{}
		lt.sessions = map[string]*loginSession{}
		lt.routes = map[string]*loginSession{}
		lt.reserved = map[string]int{}
	}
}

// manifestSupportsLoginPty says whether the shipped resources have a
// backend that can host a login terminal (one that runs commands in a pod
// through pods/exec): the manifest's supportsLoginPty. The host reads it
// per provider, not per environment, so an environment whose backend
// cannot (job) is refused at loginPtyOpen with an error that says so.
func manifestSupportsLoginPty() bool {
	c, err := resource.Load(resources.FS, ".")
	if err != nil {
		return false
	}
	for _, s := range c.Used(resource.UseBackend) {
		if s.Backend.Mode == resource.ModeExec {
			return true
		}
	}
	return false
}

// loginLeaseHook wraps acquire and resume: a lease they return is
// remembered for login terminals, with the call's config, company and
// environment.
func loginLeaseHook[P interface{ loginBase() BaseParams }](p *Provider, f func(context.Context, P) (Lease, error)) func(context.Context, P) (Lease, error) {
	return func(ctx context.Context, in P) (Lease, error) {
		l, err := f(ctx, in)
		if err == nil && l.ProviderLeaseID != nil && *l.ProviderLeaseID != "" {
			p.rememberLoginLease(in.loginBase(), l)
		}
		return l, err
	}
}

func (in AcquireParams) loginBase() BaseParams { return in.BaseParams }
func (in LeaseParams) loginBase() BaseParams   { return in.BaseParams }

// loginReleaseHook wraps release and destroy: the lease's terminals are
// closed first, and the lease is forgotten.
func loginReleaseHook(p *Provider, f func(context.Context, LeaseParams) (*Receipt, error)) func(context.Context, LeaseParams) (*Receipt, error) {
	return func(ctx context.Context, in LeaseParams) (*Receipt, error) {
		if in.ProviderLeaseID != nil && *in.ProviderLeaseID != "" {
			p.closeLoginSessions(ctx, func(s *loginSession) bool {
				return s.leaseID == *in.ProviderLeaseID && s.companyID == in.CompanyID
			})
		}
		r, err := f(ctx, in)
		if err == nil && in.ProviderLeaseID != nil {
			p.login.mu.Lock()
			if l, ok := p.login.leases[*in.ProviderLeaseID]; ok && l.base.CompanyID == in.CompanyID {
				delete(p.login.leases, *in.ProviderLeaseID)
			}
			p.login.mu.Unlock()
		}
		return r, err
	}
}

func (p *Provider) rememberLoginLease(base BaseParams, l Lease) {
	now := p.Now()
	ll := &loginLease{base: base, metadata: l.Metadata, remembered: now}
	exp := ""
	if l.ExpiresAt != nil {
		exp = *l.ExpiresAt
	} else if s, ok := l.Metadata["expiresAt"].(string); ok {
		exp = s
	}
	if t, err := time.Parse(time.RFC3339, exp); err == nil {
		ll.expiresAt = t
	}
	lt := &p.login
	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.init()
	lt.leases[*l.ProviderLeaseID] = ll
	if len(lt.leases) <= maxLoginLeases {
		return
	}
	// Forget expired leases, then the oldest remembered.
	var oldest string
	for id, x := range lt.leases {
		if !x.expiresAt.IsZero() && x.expiresAt.Before(now) {
			delete(lt.leases, id)
			continue
		}
		if oldest == "" || x.remembered.Before(lt.leases[oldest].remembered) {
			oldest = id
		}
	}
	if len(lt.leases) > maxLoginLeases && oldest != "" {
		delete(lt.leases, oldest)
	}
}

// LoginPtyOpen opens a login terminal in a lease's pod.
func (p *Provider) LoginPtyOpen(ctx context.Context, in LoginPtyOpenParams) (LoginPtyOpenResult, error) {
	bad := func(format string, args ...any) (LoginPtyOpenResult, error) {
		return LoginPtyOpenResult{}, rpc.Errorf(rpc.CodeInvalidParams, "loginPtyOpen: "+format+"; nothing was run", args...)
	}
	switch {
	case in.HostRouteID == "":
		return bad("hostRouteId is required")
	case in.DriverKey != loginDriverKey:
		return bad("driverKey %q is not this provider's (%q)", in.DriverKey, loginDriverKey)
	case in.CompanyID == "" || in.EnvironmentID == "" || in.ProviderLeaseID == "":
		return bad("companyId, environmentId and providerLeaseId are required")
	case loginCommands[in.LoginCommandKey] == nil:
		return bad("loginCommandKey %q is not one of %v (the command is chosen by the provider from these keys only)", in.LoginCommandKey, loginCommandKeys())
	case !loginSessionHome.MatchString(in.SessionHome):
		return bad("sessionHome %q is not of the form /tmp/paperclip-adapter-login/<uuid>", in.SessionHome)
	}
	lt := &p.login
	lt.mu.Lock()
	lt.init()
	ll := lt.leases[in.ProviderLeaseID]
	lt.mu.Unlock()
	if ll == nil {
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: lease %s was not acquired or resumed through this worker (it was released, or the worker restarted since); start the login again so that it acquires a new lease; nothing was run", in.ProviderLeaseID)
	}
	if ll.base.CompanyID != in.CompanyID || ll.base.EnvironmentID != in.EnvironmentID {
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: lease %s belongs to another company or environment than company %s, environment %s; refusing to open a terminal in it, nothing was run", in.ProviderLeaseID, in.CompanyID, in.EnvironmentID)
	}
	if !ll.expiresAt.IsZero() && !p.Now().Before(ll.expiresAt) {
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: lease %s expired at %s; start the login again; nothing was run", in.ProviderLeaseID, ll.expiresAt.Format(time.RFC3339))
	}
	base := ll.base
	base.DriverKey = in.DriverKey
	cfg, err := p.parseConfig(base.Config)
	if err != nil {
		return LoginPtyOpenResult{}, err
	}
	m := metadataFrom(ll.metadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, in.ProviderLeaseID, m)
	if err != nil {
		return LoginPtyOpenResult{}, err
	}
	if ref.Resource.Backend.Mode != resource.ModeExec {
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: lease %s is on backend %q, which runs no commands in its pod (mode %s), so it cannot host a login terminal; set the environment's config field backend to one that runs commands through pods/exec (sandbox); nothing was run", in.ProviderLeaseID, ref.Resource.Name, ref.Resource.Backend.Mode)
	}

	// Reserve a place under the caps before anything is read or run.
	lt.mu.Lock()
	total, company := len(lt.sessions)+lt.reserved[""], lt.reserved[in.CompanyID]
	for _, s := range lt.sessions {
		if s.companyID == in.CompanyID {
			company++
		}
	}
	switch {
	case lt.routes[in.HostRouteID] != nil:
		lt.mu.Unlock()
		return bad("hostRouteId %s already has a terminal", in.HostRouteID)
	case total >= maxLoginSessions:
		lt.mu.Unlock()
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: this worker already has %d login terminals open, its limit; finish or cancel one and try again; nothing was run", maxLoginSessions)
	case company >= maxLoginSessionsPerCompany:
		lt.mu.Unlock()
		return LoginPtyOpenResult{}, fmt.Errorf("loginPtyOpen: company %s already has %d login terminals open, its limit; finish or cancel one and try again; nothing was run", in.CompanyID, maxLoginSessionsPerCompany)
	}
	lt.reserved[""]++
	lt.reserved[in.CompanyID]++
	lt.mu.Unlock()
	unreserve := func() {
		lt.reserved[""]--
		if lt.reserved[in.CompanyID]--; lt.reserved[in.CompanyID] == 0 {
			delete(lt.reserved, in.CompanyID)
		}
	}
	fail := func(err error) (LoginPtyOpenResult, error) {
		lt.mu.Lock()
		unreserve()
		lt.mu.Unlock()
		return LoginPtyOpenResult{}, err
	}

	cl, err := p.cluster(cfg)
	if err != nil {
		return fail(err)
	}
	wctx, cancelWait := context.WithTimeout(ctx, loginOpenBudget)
	st, err := p.readyPod(wctx, cl, ref, base, m)
	cancelWait()
	if err != nil {
		return fail(fmt.Errorf("loginPtyOpen: %w; nothing was run", err))
	}

	var idb [16]byte
	_, _ = rand.Read(idb[:])
	kbd, typed := io.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	// Notifications carry no invocation id and outlive the open call.
	nctx := rpc.WithInvocation(context.WithoutCancel(ctx), rpc.Invocation{})
	s := &loginSession{
		id: "k8s-login-" + hex.EncodeToString(idb[:]), hostRouteID: in.HostRouteID,
		leaseID: in.ProviderLeaseID, companyID: in.CompanyID, key: in.LoginCommandKey,
		keyboard: typed, cancel: cancel, done: make(chan struct{}),
		notify: func(method string, params any) { _ = rpc.Notify(nctx, method, params) },
	}
	if lt.notify != nil {
		s.notify = func(method string, params any) { lt.notify(nctx, method, params) }
	}
	lt.mu.Lock()
	unreserve()
	lt.sessions[s.id] = s
	lt.routes[s.hostRouteID] = s
	lt.mu.Unlock()

	run := lt.run
	if run == nil {
		run = func(ctx context.Context, cl *cluster, req podexec.TTYRequest) (*podexec.TTYResult, error) {
			return cl.exec.RunTTY(ctx, req)
		}
	}
	req := podexec.TTYRequest{
		Namespace: ref.Namespace, Pod: st.podName, Container: ref.Resource.Pods.Container,
		Argv: loginArgv(in.LoginCommandKey, in.SessionHome), Stdin: kbd, Output: s.output,
	}
	p.Log.Info("login terminal opened", "companyId", in.CompanyID, "environmentId", in.EnvironmentID, "workload", ref.String(), "pod", st.podName, "command", in.LoginCommandKey, "session", s.id)
	go func() {
		defer close(s.done)
		res, err := run(sctx, cl, req)
		_ = kbd.Close()
		s.closeKeyboard(nil)
		s.flush()
		var code *int
		if res != nil {
			code = res.ExitCode
		}
		lt.mu.Lock()
		p.login.forgetLocked(s)
		lt.mu.Unlock()
		s.mu.Lock()
		closed := s.closed
		s.closed = true
		s.mu.Unlock()
		attrs := []any{"companyId", s.companyID, "session", s.id, "closedByHost", closed}
		if code != nil {
			attrs = append(attrs, "exitCode", *code)
		}
		if err != nil && !closed {
			attrs = append(attrs, "error", err.Error())
		}
		p.Log.Info("login terminal ended", attrs...)
		if !closed {
			s.notify(rpc.MethodLoginPtyExit, map[string]any{"hostRouteId": s.hostRouteID, "workerSessionId": s.id, "exitCode": code})
		}
	}()
	return LoginPtyOpenResult{WorkerSessionID: s.id}, nil
}

// forgetLocked drops a session from the maps (lt.mu held).
func (lt *loginTerminals) forgetLocked(s *loginSession) {
	if lt.sessions[s.id] == s {
		delete(lt.sessions, s.id)
	}
	if lt.routes[s.hostRouteID] == s {
		delete(lt.routes, s.hostRouteID)
	}
}

// output sends the terminal's output as loginPty.output chunks: whole
// UTF-8 sequences (a sequence cut by a read waits for its end), at most
// maxLoginChunk bytes each, maxLoginOutput in all; past that the session
// is stopped.
func (s *loginSession) output(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	buf := append(s.carry, p...)
	// Keep an incomplete sequence at the end for the next read.
	end := len(buf) - heldUTF8Tail(buf) // execute.go
	s.carry = append([]byte(nil), buf[end:]...)
	s.sendLocked(buf[:end])
}

// flush sends what output kept back.
func (s *loginSession) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && len(s.carry) > 0 {
		s.sendLocked(s.carry)
	}
	s.carry = nil
}

func (s *loginSession) sendLocked(b []byte) {
	if s.sent >= maxLoginOutput {
		return
	}
	over := false
	if s.sent+len(b) > maxLoginOutput {
		// Cut at a rune start (at most 3 bytes back), as the chunks are.
		n := maxLoginOutput - s.sent
		for k := 0; k < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(b[n]); k++ {
			n--
		}
		b, over = b[:n], true
	}
	for len(b) > 0 {
		n := len(b)
		if n > maxLoginChunk {
			n = maxLoginChunk
			for n > 0 && !utf8.RuneStart(b[n]) {
				n--
			}
			if n == 0 { // no sequence start at all: cut anywhere
				n = maxLoginChunk
			}
		}
		s.sent += n
		s.notify(rpc.MethodLoginPtyOutput, map[string]any{"hostRouteId": s.hostRouteID, "workerSessionId": s.id, "chunk": string(b[:n])})
		b = b[n:]
	}
	if over {
		s.sent = maxLoginOutput
		note := fmt.Sprintf("\r\n[paperclip-k8s] the login terminal printed more than %d bytes; it was stopped.\r\n", maxLoginOutput)
		s.notify(rpc.MethodLoginPtyOutput, map[string]any{"hostRouteId": s.hostRouteID, "workerSessionId": s.id, "chunk": note})
		go func() {
			// Bounded: a stream that reads no input is torn down all the same.
			ctx, cancel := context.WithTimeout(context.Background(), loginInterruptGrace)
			defer cancel()
			_ = s.interrupt(ctx, true)
		}()
	}
}

// interrupt types Ctrl-C (after what was typed before it) and waits for
// it, bounded by ctx; with end set, it then ends the stream.
func (s *loginSession) interrupt(ctx context.Context, end bool) error {
	err := s.write(ctx, []byte{3})
	if end {
		s.cancel()
	}
	return err
}

// errLoginEnded is what typing on a terminal whose command has ended (or
// that was closed) gives.
var errLoginEnded = errors.New("the terminal's command has ended; nothing more is typed on it")

// loginTypeAheadError is a terminal's input failing because the terminal
// did not read what was typed (maxLoginTypeAhead): what was given after the
// input it could not take is never typed, so nothing typed reaches it out
// of order or with a hole.
type loginTypeAheadError struct {
	session string
	unread  int
}

func (e *loginTypeAheadError) Error() string {
	return fmt.Sprintf("login terminal %s has not read the %d bytes typed on it (at most %d may wait); its input is closed and nothing more is typed: cancel the login and start it again", e.session, e.unread, maxLoginTypeAhead)
}

// loginTypeAheadNote is what the operator sees in the terminal when its
// input fails.
const loginTypeAheadNote = "\r\n[paperclip-k8s] the terminal stopped reading its input; nothing more is typed on it. Cancel the login and start it again.\r\n"

// write types data after everything given before it and waits until the
// terminal has taken it, bounded by ctx. When ctx ends first the data is
// still typed, in its place: nothing typed after it overtakes it.
func (s *loginSession) write(ctx context.Context, data []byte) error {
	typed := make(chan error, 1)
	if err := s.typeKeys(data, typed); err != nil {
		return err
	}
	select {
	case err := <-typed:
		return err
	case <-ctx.Done():
		return fmt.Errorf("login terminal %s has not taken the input yet (it is typed in its turn): %w", s.id, ctx.Err())
	}
}

// typeKeys gives data to the session's typist, which writes the inputs
// to the keyboard one at a time, in the order they were given; typed, if
// set, receives the write's outcome. It does not wait for the write. It
// fails when the input has failed (the command ended, a write failed) or
// when the terminal has not read maxLoginTypeAhead bytes: the input then
// fails for good, the operator is told in the terminal, and the keyboard
// is closed (a write in progress ends), so nothing given later is typed.
func (s *loginSession) typeKeys(data []byte, typed chan error) error {
	s.kmu.Lock()
	if s.kerr != nil {
		err := s.kerr
		s.kmu.Unlock()
		return err
	}
	if s.pending+len(data) > maxLoginTypeAhead {
		err := &loginTypeAheadError{session: s.id, unread: s.pending}
		s.failKeyboardLocked(err)
		s.kmu.Unlock()
		_ = s.keyboard.Close()
		s.mu.Lock()
		if !s.closed {
			s.notify(rpc.MethodLoginPtyOutput, map[string]any{"hostRouteId": s.hostRouteID, "workerSessionId": s.id, "chunk": loginTypeAheadNote})
		}
		s.mu.Unlock()
		return err
	}
	s.typeAhead = append(s.typeAhead, keystrokes{data: data, typed: typed})
	s.pending += len(data)
	if !s.typing {
		s.typing = true
		go s.typist()
	}
	s.kmu.Unlock()
	return nil
}

// typist writes the type-ahead to the keyboard in order, one write at a
// time, until it is empty or the input fails.
func (s *loginSession) typist() {
	for {
		s.kmu.Lock()
		if len(s.typeAhead) == 0 || s.kerr != nil {
			s.typing = false
			s.kmu.Unlock()
			return
		}
		k := s.typeAhead[0]
		s.typeAhead[0] = keystrokes{} // not kept by the array
		s.typeAhead = s.typeAhead[1:]
		s.kmu.Unlock()

		_, err := s.keyboard.Write(k.data)

		s.kmu.Lock()
		s.pending -= len(k.data)
		switch {
		case s.kerr != nil: // failed meanwhile: that is the reason
			err = s.kerr
		case errors.Is(err, io.ErrClosedPipe):
			err = fmt.Errorf("login terminal %s: %w", s.id, errLoginEnded)
			s.failKeyboardLocked(err)
		case err != nil:
			// The terminal may have taken part of it: nothing after it
			// is typed.
			err = fmt.Errorf("login terminal %s: typing on the terminal failed, nothing more is typed on it: %w", s.id, err)
			s.failKeyboardLocked(err)
		}
		s.kmu.Unlock()
		if k.typed != nil {
			k.typed <- err
		}
	}
}

// failKeyboardLocked fails the input with err (the first failure stays):
// the type-ahead is dropped and its waiters told (s.kmu held).
func (s *loginSession) failKeyboardLocked(err error) {
	if s.kerr == nil {
		s.kerr = err
	}
	for _, k := range s.typeAhead {
		s.pending -= len(k.data)
		if k.typed != nil {
			k.typed <- s.kerr
		}
	}
	s.typeAhead = nil
}

// closeKeyboard ends the input (the command ended, or the session is
// closed): nothing more is typed, a write in progress ends.
func (s *loginSession) closeKeyboard(cause error) {
	if cause == nil {
		cause = fmt.Errorf("login terminal %s: %w", s.id, errLoginEnded)
	}
	s.kmu.Lock()
	s.failKeyboardLocked(cause)
	s.kmu.Unlock()
	_ = s.keyboard.Close()
}

func (p *Provider) loginSession(id string) (*loginSession, error) {
	p.login.mu.Lock()
	s := p.login.sessions[id]
	p.login.mu.Unlock()
	if s == nil {
		return nil, rpc.Errorf(rpc.CodeInvalidParams, "no login terminal %q on this worker (it ended, was closed, or the worker restarted)", id)
	}
	return s, nil
}

// LoginPtyInput types the host's data on a terminal's keyboard, after
// what was given before it (the connection serves a terminal's inputs in
// arrival order, OrderedRequests). It returns once the data is in the
// terminal's type-ahead: a terminal slow to read lags, it never sees the
// inputs out of order, and one that stops reading fails its input
// (loginTypeAheadError) rather than skipping any.
func (p *Provider) LoginPtyInput(_ context.Context, in LoginPtyInputParams) (any, error) {
	if len(in.Data) > maxLoginInput {
		return nil, rpc.Errorf(rpc.CodeInvalidParams, "loginPtyInput: data is %d bytes, more than the %d a terminal input may carry; send it in parts", len(in.Data), maxLoginInput)
	}
	s, err := p.loginSession(in.WorkerSessionID)
	if err != nil {
		return nil, err
	}
	if in.Data == "" {
		return nil, nil
	}
	return nil, s.typeKeys([]byte(in.Data), nil)
}

// LoginPtyStop interrupts a terminal's command: Ctrl-C, typed after what
// was typed before it, which the terminal turns into SIGINT for it. Its
// exit is reported as usual; loginPtyClose ends the stream. Stopping a
// terminal that has ended (the host stops every login when it is over)
// does nothing. When the Ctrl-C cannot be typed (the input failed, or the
// terminal does not take it within loginInterruptGrace) the stream is
// ended instead, so that the command still ends and its exit is reported,
// and the error says why.
func (p *Provider) LoginPtyStop(ctx context.Context, in LoginPtyStopParams) (any, error) {
	if in.WorkerSessionID == "" {
		return nil, rpc.Errorf(rpc.CodeInvalidParams, "loginPtyStop: workerSessionId is required")
	}
	p.login.mu.Lock()
	s := p.login.sessions[in.WorkerSessionID]
	p.login.mu.Unlock()
	if s == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, loginInterruptGrace)
	defer cancel()
	err := s.interrupt(ctx, false)
	if err == nil || errors.Is(err, errLoginEnded) {
		return nil, nil
	}
	s.cancel()
	return nil, fmt.Errorf("loginPtyStop: %w; the terminal's stream was ended instead of Ctrl-C", err)
}

// LoginPtyClose ends a terminal (Ctrl-C, then the stream is torn down)
// and acknowledges with the host's route id, also when the route has no
// terminal (any more): the host retires a worker that does not confirm.
func (p *Provider) LoginPtyClose(ctx context.Context, in LoginPtyCloseParams) (LoginPtyCloseResult, error) {
	if in.HostRouteID == "" {
		return LoginPtyCloseResult{}, rpc.Errorf(rpc.CodeInvalidParams, "loginPtyClose: hostRouteId is required")
	}
	p.closeLoginSessions(ctx, func(s *loginSession) bool {
		return s.hostRouteID == in.HostRouteID && (in.WorkerSessionID == nil || *in.WorkerSessionID == s.id)
	})
	return LoginPtyCloseResult{HostRouteID: in.HostRouteID}, nil
}

// closeLoginSessions closes the sessions match selects: nothing more is
// sent for them, Ctrl-C is typed, the stream is torn down; it waits (bounded
// by ctx and 5 s) for them to end.
func (p *Provider) closeLoginSessions(ctx context.Context, match func(*loginSession) bool) {
	lt := &p.login
	lt.mu.Lock()
	lt.init()
	var closing []*loginSession
	for _, s := range lt.sessions {
		if match(s) {
			closing = append(closing, s)
			lt.forgetLocked(s)
		}
	}
	lt.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, loginInterruptGrace)
	defer cancel()
	for _, s := range closing {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		_ = s.interrupt(wctx, true)
		s.closeKeyboard(nil)
		p.Log.Info("login terminal closed", "companyId", s.companyID, "session", s.id, "lease", s.leaseID)
	}
	for _, s := range closing {
		select {
		case <-s.done:
		case <-wctx.Done():
		}
	}
}

// closeAllLoginSessions closes every terminal (worker shutdown).
func (p *Provider) closeAllLoginSessions(ctx context.Context) {
	p.closeLoginSessions(ctx, func(*loginSession) bool { return true })
}

// OrderedRequests is the worker connection's rpc.Options.Ordered: the host
// sends a terminal's keystrokes (loginPtyInput) as separate requests without
// waiting for each reply, so the worker writes them one after the other, in
// the order they arrived, per terminal. Stop and close are not queued behind
// them: Ctrl-C must reach a terminal whose command reads nothing.
func OrderedRequests(method string, params json.RawMessage) (key string, ok bool) {
	if method != rpc.MethodLoginPtyInput {
		return "", false
	}
	var in struct {
		WorkerSessionID string `json:"workerSessionId"`
	}
	if json.Unmarshal(params, &in) != nil {
		return "", false // the handler answers invalid params
	}
	return in.WorkerSessionID, true
}
