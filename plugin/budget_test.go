package plugin

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

func TestBudgetFor(t *testing.T) {
	const o = 30 * time.Second
	for _, c := range []struct {
		name                      string
		raw                       map[string]any
		overhead                  time.Duration
		host, margin, reply, work time.Duration
	}{
		{"neither set: the host's 30 s", map[string]any{}, o, 30 * time.Second, 3 * time.Second, 27 * time.Second, 21600 * time.Millisecond},
		{"timeoutMs", map[string]any{"timeoutMs": 1000.0}, o, 31 * time.Second, 3100 * time.Millisecond, 27900 * time.Millisecond, 22320 * time.Millisecond},
		{"the larger of the two", map[string]any{"timeoutMs": 1000.0, "bridgeRequestTimeoutMs": 120000.0}, o, 150 * time.Second, 15 * time.Second, 135 * time.Second, 125 * time.Second},
		{"fractions truncate", map[string]any{"bridgeRequestTimeoutMs": 2000.9}, o, 32 * time.Second, 3200 * time.Millisecond, 28800 * time.Millisecond, 23040 * time.Millisecond},
		{"non-numbers and non-positive values do not count", map[string]any{"timeoutMs": "90000", "bridgeRequestTimeoutMs": -5.0}, o, 30 * time.Second, 3 * time.Second, 27 * time.Second, 21600 * time.Millisecond},
		{"below one millisecond does not count", map[string]any{"timeoutMs": 0.5}, o, 30 * time.Second, 3 * time.Second, 27 * time.Second, 21600 * time.Millisecond},
		{"test overhead", map[string]any{"timeoutMs": 1000.0}, 9 * time.Second, 10 * time.Second, 3 * time.Second, 7 * time.Second, 5600 * time.Millisecond},
		{"tiny test budget keeps a positive reply and work time", map[string]any{"timeoutMs": 1.0}, time.Millisecond, 2 * time.Millisecond, 3 * time.Second, time.Second, 500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			b := budgetFor(c.raw, c.overhead)
			is.Equal(b.Host, c.host)
			is.Equal(b.Margin, c.margin)
			is.Equal(b.Reply, c.reply)
			is.Equal(b.Work, c.work)
			is.True(b.Work < b.Reply && b.Reply < b.Host || c.overhead < time.Second)
		})
	}
}

func TestHookOverheadIsTestOnlyEnv(t *testing.T) {
	is := is.New(t)
	p := &Provider{Getenv: func(string) string { return "" }}
	is.Equal(p.hookOverhead(), 30*time.Second)
	p.Getenv = func(k string) string {
		if k == EnvTestHookOverheadMs {
			return "4000"
		}
		return ""
	}
	is.Equal(p.hookOverhead(), 4*time.Second)
	p.Getenv = func(string) string { return "-1" }
	is.Equal(p.hookOverhead(), 30*time.Second)
}

func testProvider(t testing.TB, env map[string]string) *Provider {
	t.Helper()
	p, err := New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	p.Getenv = func(k string) string { return env[k] }
	return p
}

var tinyBudget = func(int) hookBudget {
	return hookBudget{Host: time.Second, Margin: 500 * time.Millisecond, Reply: 300 * time.Millisecond, Work: 150 * time.Millisecond, Basis: "test"}
}

// awaitReply waits for a reply; the bound only keeps a broken wrapper from
// hanging the test.
func awaitReply[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("no reply within 30 s")
		panic("unreachable")
	}
}

// A hook stuck in a call that ignores its context is answered with an
// error at the reply deadline; the probe's answer is a failed result.
func TestBoundedAnswersAHookThatIgnoresItsContext(t *testing.T) {
	is := is.New(t)
	p := testProvider(t, nil)
	release := make(chan struct{})
	defer close(release)
	stuck := func(context.Context, int) (string, error) { <-release; return "late", nil }

	type reply struct {
		r   string
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		r, err := boundedWith(p, "environmentAcquireLease", tinyBudget, stuck, nil)(context.Background(), 0)
		ch <- reply{r, err}
	}()
	got := awaitReply(t, ch)
	is.Equal(got.r, "")
	is.True(got.err != nil)
	msg := got.err.Error()
	is.True(strings.Contains(msg, "environmentAcquireLease did not finish within its time budget of 300ms"))
	is.True(strings.Contains(msg, "the host waits test, less a margin of 500ms"))

	ch2 := make(chan ProbeResult, 1)
	go func() {
		r, err := boundedWith(p, "environmentProbe", tinyBudget, func(context.Context, int) (ProbeResult, error) {
			<-release
			return ProbeResult{OK: true}, nil
		}, probeLate)(context.Background(), 0)
		is.NoErr(err)
		ch2 <- r
	}()
	pr := awaitReply(t, ch2)
	is.True(!pr.OK)
	is.Equal(len(pr.Diagnostics), 1)
	is.Equal(pr.Diagnostics[0].Code, "timeout")
	is.True(strings.Contains(pr.Diagnostics[0].Message, "environmentProbe did not finish within its time budget"))
}

// The hook's context ends at the work deadline and carries the reply
// deadline as its cleanup deadline; an error after the expiry says the
// budget ran out and keeps the cause.
func TestBoundedHookContext(t *testing.T) {
	is := is.New(t)
	p := testProvider(t, nil)
	var workDL, cleanupDL time.Time
	start := time.Now()
	_, err := boundedWith(p, "environmentReleaseLease", tinyBudget, func(ctx context.Context, _ int) (int, error) {
		var ok bool
		workDL, ok = ctx.Deadline()
		is.True(ok)
		cleanupDL, ok = engine.CleanupDeadline(ctx)
		is.True(ok)
		<-ctx.Done()
		// Cleanup after the expiry still has a live, bounded context.
		cctx, cancel := engine.CleanupContext(ctx)
		defer cancel()
		is.NoErr(cctx.Err())
		return 0, fmt.Errorf("deleting Sandbox ns/x: %w", ctx.Err())
	}, nil)(context.Background(), 0)
	is.True(errors.Is(err, context.DeadlineExceeded))
	is.True(strings.Contains(err.Error(), "environmentReleaseLease did not finish within its time budget of 300ms"))
	is.True(strings.Contains(err.Error(), "deleting Sandbox ns/x"))
	is.True(!workDL.Before(start.Add(150*time.Millisecond)) && !workDL.After(time.Now()))
	is.Equal(cleanupDL.Sub(workDL).Round(10*time.Millisecond), 150*time.Millisecond)
}

// A hook that answers in time is passed through unchanged; a panic becomes
// an internal error, as the RPC layer makes it.
func TestBoundedPassesThrough(t *testing.T) {
	is := is.New(t)
	p := testProvider(t, nil)
	big := func(int) hookBudget { return budgetFor(nil, time.Hour) }
	r, err := boundedWith(p, "m", big, func(context.Context, int) (string, error) { return "ok", nil }, nil)(context.Background(), 0)
	is.NoErr(err)
	is.Equal(r, "ok")
	want := rpc.Errorf(rpc.CodeInvalidParams, "invalid Kubernetes provider config: x")
	_, err = boundedWith(p, "m", big, func(context.Context, int) (string, error) { return "", want }, nil)(context.Background(), 0)
	is.Equal(err, want)
	_, err = boundedWith(p, "m", big, func(context.Context, int) (string, error) { panic("boom") }, nil)(context.Background(), 0)
	var re *rpc.Error
	is.True(errors.As(err, &re))
	is.Equal(re.Code, rpc.CodeInternalError)
	is.True(strings.Contains(re.Message, "m handler panicked: boom"))
}

// stallingAPI is a TLS API server that answers nothing until released.
type stallingAPI struct {
	srv      *httptest.Server
	release  chan struct{}
	requests atomic.Int64
	once     sync.Once
}

func newStallingAPI(t testing.TB) *stallingAPI {
	s := &stallingAPI{release: make(chan struct{})}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		select {
		case <-s.release:
		case <-r.Context().Done():
		}
		http.Error(w, "released", http.StatusServiceUnavailable)
	}))
	t.Cleanup(func() {
		s.once.Do(func() { close(s.release) })
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
	return s
}

func (s *stallingAPI) kubeconfig(t testing.TB) string {
	kc := clientcmdapi.NewConfig()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: s.srv.URL, CertificateAuthorityData: ca}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "x"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every bounded hook, registered as the worker registers it, answers
// against an API server that never answers (with the test overhead of 1 ms
// and timeoutMs 1 the budget is the 1 s floor).
func TestMethodsAreBoundedAgainstAStalledAPIServer(t *testing.T) {
	api := newStallingAPI(t)
	p := testProvider(t, map[string]string{EnvTestHookOverheadMs: "1"})
	mux := p.Methods()
	config := map[string]any{"kubeconfig": api.kubeconfig(t), "backend": "sandbox", "timeoutMs": 1}
	base := map[string]any{"driverKey": "kubernetes", "companyId": "co-1", "environmentId": "env-1", "config": config}
	with := func(extra map[string]any) json.RawMessage {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	leaseExtra := map[string]any{"providerLeaseId": "pc-01jd8x6m9q2r3s4t5v6w7x8y9z", "leaseMetadata": map[string]any{"workloadUid": "u-1"}}
	for _, c := range []struct {
		method string
		params json.RawMessage
	}{
		{rpc.MethodEnvironmentAcquireLease, with(map[string]any{"runId": "run-1", "adapterType": "claude_local"})},
		{rpc.MethodEnvironmentResumeLease, with(leaseExtra)},
		{rpc.MethodEnvironmentReleaseLease, with(leaseExtra)},
		{rpc.MethodEnvironmentDestroyLease, with(leaseExtra)},
		{rpc.MethodEnvironmentProbe, with(nil)},
	} {
		t.Run(c.method, func(t *testing.T) {
			is := is.New(t)
			type reply struct {
				r   any
				err error
			}
			ch := make(chan reply, 1)
			go func() {
				r, err := mux.Handle(context.Background(), c.method, c.params)
				ch <- reply{r, err}
			}()
			got := awaitReply(t, ch)
			if c.method == rpc.MethodEnvironmentProbe {
				is.NoErr(got.err)
				pr := got.r.(ProbeResult)
				is.True(!pr.OK)
				// The probe's own calls end with its context (or the reply
				// goes out at the budget): either way it says so.
				msg := pr.Diagnostics[0].Message
				if !strings.Contains(msg, "did not finish within its time budget") && !strings.Contains(msg, "context deadline exceeded") {
					t.Errorf("probe diagnostic %q says nothing of the budget or the deadline", msg)
				}
				return
			}
			is.True(got.err != nil)
			is.True(strings.Contains(got.err.Error(), c.method+" did not finish within its time budget of 1s"))
			is.True(strings.Contains(got.err.Error(), "max(timeoutMs) + 1ms = 2ms"))
		})
	}
	if api.requests.Load() == 0 {
		t.Fatal("no request reached the stalled API server: the test proves nothing")
	}
}
