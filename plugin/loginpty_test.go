package plugin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

const testSessionHome = "/tmp/paperclip-adapter-login/0b9c1f4e-5a57-4d4c-9a2e-8f1d2c3b4a59"

// loginHost records what a login terminal sends the host, and the
// terminal commands the provider starts (run: the fake terminal).
type loginHost struct {
	mu      sync.Mutex
	changed chan struct{}
	notes   []loginNote
	started []podexec.TTYRequest
}

type loginNote struct {
	method string
	params map[string]any
}

func (h *loginHost) add(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f()
	close(h.changed)
	h.changed = make(chan struct{})
}

// waitFor waits until cond holds on the notes (no sleeps).
func (h *loginHost) waitFor(t *testing.T, what string, cond func([]loginNote) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		h.mu.Lock()
		ok, ch := cond(h.notes), h.changed
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, h.notes)
		}
	}
}

func (h *loginHost) output(session string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return outputOf(h.notes, session)
}

func outputOf(notes []loginNote, session string) string {
	var b strings.Builder
	for _, n := range notes {
		if n.method == rpc.MethodLoginPtyOutput && n.params["workerSessionId"] == session {
			b.WriteString(n.params["chunk"].(string))
		}
	}
	return b.String()
}

func exitOf(session string) func([]loginNote) bool {
	return func(notes []loginNote) bool {
		for _, n := range notes {
			if n.method == rpc.MethodLoginPtyExit && n.params["workerSessionId"] == session {
				return true
			}
		}
		return false
	}
}

// loginProvider is fakeProvider whose terminals run term and whose
// notifications go to the returned host.
func loginProvider(t *testing.T, term func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error)) (*fakeCluster, *loginHost) {
	f := fakeProvider(t)
	h := &loginHost{changed: make(chan struct{})}
	f.p.login.notify = func(ctx context.Context, method string, params any) {
		if _, ok := rpc.InvocationFrom(ctx); ok {
			t.Errorf("%s carries an invocation id", method)
		}
		h.add(func() { h.notes = append(h.notes, loginNote{method, params.(map[string]any)}) })
	}
	f.p.login.run = func(ctx context.Context, _ *cluster, req podexec.TTYRequest) (*podexec.TTYResult, error) {
		h.add(func() { h.started = append(h.started, req) })
		return term(ctx, req)
	}
	t.Cleanup(func() { f.p.closeAllLoginSessions(context.Background()) })
	return f, h
}

// loginLease acquires a lease for company through the acquire hook (so
// the worker remembers it) and makes its workload and pod ready.
func (f *fakeCluster) loginLease(t *testing.T, company string, mutate func(*AcquireParams)) Lease {
	t.Helper()
	in := acquireParams(company)
	if mutate != nil {
		mutate(&in)
	}
	l, err := loginLeaseHook(f.p, f.p.AcquireLease)(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if in.Config["backend"] == "sandbox" {
		w := enginetest.SetStatus(t, f.e, f.workload(t, l), f.backend(t), readyCondition("True", "DependenciesReady"))
		f.addPod(t, w)
	}
	return l
}

func openParams(l Lease, company, key string) LoginPtyOpenParams {
	return LoginPtyOpenParams{
		HostRouteID: "route-" + randomSuffix(), DriverKey: "kubernetes", CompanyID: company, EnvironmentID: "env-1",
		ProviderLeaseID: *l.ProviderLeaseID, LoginCommandKey: key, SessionHome: testSessionHome,
	}
}

func randomSuffix() string { return fmt.Sprint(time.Now().UnixNano()) }

// blockingTerm is a terminal whose command runs until its stream is torn
// down, recording what was typed.
func blockingTerm(typed *strings.Builder, mu *sync.Mutex) func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error) {
	return func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error) {
		read := make(chan struct{})
		go func() {
			defer close(read)
			b := make([]byte, 64)
			for {
				n, err := req.Stdin.Read(b)
				mu.Lock()
				typed.Write(b[:n])
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		<-ctx.Done()
		<-read // the keyboard is closed with the session
		return &podexec.TTYResult{}, ctx.Err()
	}
}

// A login terminal runs the provider's command for the key in the lease's
// pod, sends its output and exit to the host (with the host's route id,
// no invocation id), and types the host's input.
func TestLoginPtySession(t *testing.T) {
	is := is.New(t)
	f, h := loginProvider(t, func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error) {
		req.Output([]byte("Open https://auth.openai.com/codex/device\r\nEnter this one-time code\r\nABCD-12345\r\nline? "))
		line, err := bufio.NewReader(req.Stdin).ReadString('\r')
		if err != nil {
			return nil, err
		}
		// "é" cut between two reads arrives whole.
		req.Output([]byte("got:" + strings.TrimSuffix(line, "\r") + " \xc3"))
		req.Output([]byte("\xa9\r\n"))
		zero := 0
		return &podexec.TTYResult{ExitCode: &zero}, nil
	})
	l := f.loginLease(t, "acme", nil)
	in := openParams(l, "acme", "codex")
	res, err := f.p.LoginPtyOpen(context.Background(), in)
	is.NoErr(err)
	is.True(strings.HasPrefix(res.WorkerSessionID, "k8s-login-"))
	h.waitFor(t, "the prompt", func(notes []loginNote) bool { return strings.Contains(outputOf(notes, res.WorkerSessionID), "line? ") })
	_, err = f.p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: res.WorkerSessionID, Data: "hello\r"})
	is.NoErr(err)
	h.waitFor(t, "the exit", exitOf(res.WorkerSessionID))

	h.mu.Lock()
	req := h.started[0]
	var exit loginNote
	for _, n := range h.notes {
		is.Equal(n.params["hostRouteId"], in.HostRouteID)
		is.Equal(n.params["workerSessionId"], res.WorkerSessionID)
		if n.method == rpc.MethodLoginPtyOutput {
			is.True(utf8.ValidString(n.params["chunk"].(string)))
		} else {
			exit = n
		}
	}
	h.mu.Unlock()
	is.Equal(req.Namespace, "paperclip-acme")
	is.Equal(req.Pod, metadataFrom(l.Metadata).WorkloadName)
	is.Equal(req.Container, f.backend(t).Pods.Container)
	is.Equal(req.Argv, []string{"/bin/sh", "-c", "umask 077 && mkdir -p '" + testSessionHome + "' && exec env CODEX_HOME='" + testSessionHome + "' codex login --device-auth"})
	is.True(strings.HasSuffix(h.output(res.WorkerSessionID), "got:hello é\r\n"))
	is.Equal(*(exit.params["exitCode"].(*int)), 0)

	// The session is gone: input is refused, stop does nothing, close still
	// acknowledges.
	_, err = f.p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: res.WorkerSessionID, Data: "x"})
	is.True(err != nil)
	_, err = f.p.LoginPtyStop(context.Background(), LoginPtyStopParams(res))
	is.NoErr(err)
	ack, err := f.p.LoginPtyClose(context.Background(), LoginPtyCloseParams{HostRouteID: in.HostRouteID})
	is.NoErr(err)
	is.Equal(ack.HostRouteID, in.HostRouteID)
}

// The keys map to fixed commands; claude's is setup-token (its token is
// printed, not stored), codex's and grok's keep their home in the session
// home.
func TestLoginArgv(t *testing.T) {
	is := is.New(t)
	is.Equal(loginArgv("claude", testSessionHome)[2], "umask 077 && mkdir -p '"+testSessionHome+"' && exec claude setup-token")
	is.Equal(loginArgv("grok", testSessionHome)[2], "umask 077 && mkdir -p '"+testSessionHome+"' && exec env GROK_HOME='"+testSessionHome+"' grok login --device-auth")
	is.Equal(loginCommandKeys(), []string{"claude", "codex", "grok"})
	is.True(manifestSupportsLoginPty()) // the shipped sandbox backend runs commands through pods/exec
}

// Every refusal happens before anything runs, and says why.
func TestLoginPtyRefusals(t *testing.T) {
	f, h := loginProvider(t, func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error) {
		t.Errorf("a terminal was started: %v", req.Argv)
		return nil, errors.New("not expected")
	})
	l := f.loginLease(t, "acme", nil)
	other := f.loginLease(t, "beta", nil)
	job := f.loginLease(t, "acme", func(in *AcquireParams) { in.Config["backend"] = "job" })
	tampered := f.loginLease(t, "acme", nil)
	w := f.workload(t, tampered)
	labels := w.GetLabels()
	labels[policy.LabelCompanyID] = policy.LabelValue("beta")
	w.SetLabels(labels)
	r, err := f.e.Resolve(f.backend(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.dyn.Resource(r.GVR).Namespace(w.GetNamespace()).Update(context.Background(), w, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		in   func() LoginPtyOpenParams
		want string
	}{
		{"unknown command key", func() LoginPtyOpenParams { return openParams(l, "acme", "bash") }, `loginCommandKey "bash" is not one of [claude codex grok]`},
		{"a command as the key", func() LoginPtyOpenParams { return openParams(l, "acme", "codex; rm -rf /") }, "is not one of"},
		{"session home traversal", func() LoginPtyOpenParams {
			in := openParams(l, "acme", "codex")
			in.SessionHome = "/tmp/paperclip-adapter-login/../../etc"
			return in
		}, "is not of the form /tmp/paperclip-adapter-login/<uuid>"},
		{"session home with a quote", func() LoginPtyOpenParams {
			in := openParams(l, "acme", "codex")
			in.SessionHome = testSessionHome + "'; id; '"
			return in
		}, "is not of the form"},
		{"another driver", func() LoginPtyOpenParams {
			in := openParams(l, "acme", "codex")
			in.DriverKey = "daytona"
			return in
		}, `driverKey "daytona" is not this provider's`},
		{"a lease of another company", func() LoginPtyOpenParams { return openParams(other, "acme", "codex") }, "belongs to another company or environment"},
		{"another environment", func() LoginPtyOpenParams {
			in := openParams(l, "acme", "codex")
			in.EnvironmentID = "env-2"
			return in
		}, "belongs to another company or environment"},
		{"a lease this worker did not acquire", func() LoginPtyOpenParams {
			in := openParams(l, "acme", "codex")
			in.ProviderLeaseID = policy.RunNamePrefix + "aaaaaaaaaaaaaaaaaaaaaaaaaa"
			return in
		}, "was not acquired or resumed through this worker"},
		{"a job backend", func() LoginPtyOpenParams { return openParams(job, "acme", "codex") }, `is on backend "job", which runs no commands in its pod`},
		{"a workload relabelled for another company", func() LoginPtyOpenParams { return openParams(tampered, "acme", "codex") }, "is not a workload of this company and environment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.p.LoginPtyOpen(context.Background(), tc.in())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "nothing was run") {
				t.Errorf("the error does not say that nothing ran: %v", err)
			}
			t.Logf("%v", err)
		})
	}
	t.Run("expired lease", func(t *testing.T) {
		is := is.New(t)
		f.p.Now = func() time.Time { return hookT0.Add(48 * time.Hour) }
		defer func() { f.p.Now = func() time.Time { return hookT0 } }()
		_, err := f.p.LoginPtyOpen(context.Background(), openParams(l, "acme", "codex"))
		is.True(err != nil && strings.Contains(err.Error(), "expired at"))
	})
	t.Run("a released lease", func(t *testing.T) {
		is := is.New(t)
		_, err := loginReleaseHook(f.p, f.p.ReleaseLease)(context.Background(), leaseParams(l))
		is.NoErr(err)
		_, err = f.p.LoginPtyOpen(context.Background(), openParams(l, "acme", "codex"))
		is.True(err != nil && strings.Contains(err.Error(), "was not acquired or resumed through this worker"))
	})
	t.Run("oversized input", func(t *testing.T) {
		is := is.New(t)
		_, err := f.p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: "k8s-login-x", Data: strings.Repeat("a", maxLoginInput+1)})
		is.True(err != nil && strings.Contains(err.Error(), "more than the 65536"))
	})
	h.mu.Lock()
	is.New(t).Equal(len(h.started), 0)
	h.mu.Unlock()
}

// At most 4 terminals per company and 16 per worker; a closed one frees
// its place.
func TestLoginPtyCaps(t *testing.T) {
	is := is.New(t)
	var mu sync.Mutex
	var typed strings.Builder
	f, _ := loginProvider(t, blockingTerm(&typed, &mu))
	companies := []string{"c1", "c2", "c3", "c4", "c5"}
	leases := map[string]Lease{}
	for _, c := range companies {
		leases[c] = f.loginLease(t, c, nil)
	}
	var first LoginPtyOpenParams
	for _, c := range companies[:4] {
		for i := 0; i < maxLoginSessionsPerCompany; i++ {
			in := openParams(leases[c], c, "claude")
			if first.HostRouteID == "" {
				first = in
			}
			_, err := f.p.LoginPtyOpen(context.Background(), in)
			is.NoErr(err)
		}
		if c == "c1" {
			_, err := f.p.LoginPtyOpen(context.Background(), openParams(leases[c], c, "claude"))
			is.True(err != nil && strings.Contains(err.Error(), "company c1 already has 4 login terminals open"))
		}
	}
	_, err := f.p.LoginPtyOpen(context.Background(), openParams(leases["c5"], "c5", "claude"))
	is.True(err != nil && strings.Contains(err.Error(), "this worker already has 16 login terminals open"))
	ack, err := f.p.LoginPtyClose(context.Background(), LoginPtyCloseParams{HostRouteID: first.HostRouteID})
	is.NoErr(err)
	is.Equal(ack.HostRouteID, first.HostRouteID)
	_, err = f.p.LoginPtyOpen(context.Background(), openParams(leases["c5"], "c5", "claude"))
	is.NoErr(err)
}

// Stop types Ctrl-C; releasing the lease closes its terminals (Ctrl-C,
// stream torn down, no exit sent after the close), and so does shutdown.
func TestLoginPtyStopReleaseShutdown(t *testing.T) {
	is := is.New(t)
	var mu sync.Mutex
	var typed strings.Builder
	f, h := loginProvider(t, blockingTerm(&typed, &mu))
	l := f.loginLease(t, "acme", nil)
	a, err := f.p.LoginPtyOpen(context.Background(), openParams(l, "acme", "codex"))
	is.NoErr(err)
	_, err = f.p.LoginPtyStop(context.Background(), LoginPtyStopParams(a))
	is.NoErr(err)
	b, err := f.p.LoginPtyOpen(context.Background(), openParams(l, "acme", "codex"))
	is.NoErr(err)
	_, err = loginReleaseHook(f.p, f.p.ReleaseLease)(context.Background(), leaseParams(l))
	is.NoErr(err)
	for _, id := range []string{a.WorkerSessionID, b.WorkerSessionID} {
		_, err := f.p.LoginPtyInput(context.Background(), LoginPtyInputParams{WorkerSessionID: id, Data: "x"})
		is.True(err != nil && strings.Contains(err.Error(), "no login terminal"))
	}
	mu.Lock()
	is.True(strings.Count(typed.String(), "\x03") >= 3) // stop, then the close of each
	mu.Unlock()
	h.mu.Lock()
	is.Equal(len(h.notes), 0) // both closed by their lease: no exit
	h.mu.Unlock()

	l2 := f.loginLease(t, "acme", nil)
	_, err = f.p.LoginPtyOpen(context.Background(), openParams(l2, "acme", "grok"))
	is.NoErr(err)
	f.p.closeAllLoginSessions(context.Background())
	f.p.login.mu.Lock()
	is.Equal(len(f.p.login.sessions), 0)
	f.p.login.mu.Unlock()
}

// Output goes in chunks of at most 64 KiB, 4 MiB in all: past that the
// host is told and the command is interrupted and its stream ended.
func TestLoginPtyOutputCap(t *testing.T) {
	is := is.New(t)
	ended := make(chan bool, 1)
	f, h := loginProvider(t, func(ctx context.Context, req podexec.TTYRequest) (*podexec.TTYResult, error) {
		chunk := []byte(strings.Repeat("é", 100<<10)) // 200 KiB
		for i := 0; i < 30 && ctx.Err() == nil; i++ {
			req.Output(chunk)
		}
		b := make([]byte, 1)
		_, _ = req.Stdin.Read(b) // Ctrl-C
		<-ctx.Done()
		ended <- b[0] == 3
		return &podexec.TTYResult{}, ctx.Err()
	})
	l := f.loginLease(t, "acme", nil)
	res, err := f.p.LoginPtyOpen(context.Background(), openParams(l, "acme", "codex"))
	is.NoErr(err)
	is.True(<-ended)
	h.waitFor(t, "the exit", exitOf(res.WorkerSessionID))
	out := h.output(res.WorkerSessionID)
	is.True(strings.HasSuffix(out, "printed more than 4194304 bytes; it was stopped.\r\n"))
	is.True(len(out) <= maxLoginOutput+200)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.notes {
		if c, ok := n.params["chunk"].(string); ok {
			is.True(len(c) <= maxLoginChunk)
			is.True(utf8.ValidString(c))
		}
	}
}
