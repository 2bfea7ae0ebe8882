package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/paperclip-k8s/paperclip-k8s/internal/faultproxy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Bounded hooks through the built binary, with a fault-injecting proxy
// between the worker and the local control plane: stalls and lost
// responses.
//
// The configs set timeoutMs 1000 and the worker runs with the test-only
// PAPERCLIP_K8S_TEST_HOOK_OVERHEAD_MS=14000 in place of the host's 30 s:
// the host would wait 15 s, the budget is 15 s less a margin of 3 s.
const (
	boundedTimeoutMs  = 1000
	boundedOverheadMs = 14000
	boundedHostWait   = (boundedTimeoutMs + boundedOverheadMs) * time.Millisecond
	// boundedGuard only keeps a broken worker from hanging the test; it is
	// not a measure of speed.
	boundedGuard = 2 * boundedHostWait
)

// proxiedHooks is a worker whose config's kubeconfig goes through a fault
// proxy in front of the dev API server (the admin's token passes through).
func proxiedHooks(t *testing.T, backend string) (*hooks, *faultproxy.Proxy) {
	t.Helper()
	h := newHooks(t, backend, map[string]any{"timeoutMs": boundedTimeoutMs},
		workerOpts{env: []string{fmt.Sprintf("%s=%d", plugin.EnvTestHookOverheadMs, boundedOverheadMs)}})
	rc := h.env.RESTConfig()
	fp, err := faultproxy.New(rc.Host, rc.CAData)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fp.Close)
	kc, err := fp.Rewrite(h.env.KubeconfigBytes())
	if err != nil {
		t.Fatal(err)
	}
	h.config["kubeconfig"] = string(kc)
	return h, fp
}

// callWithin sends a request and waits for its reply (the guard fails the
// test; the reply's arrival is what is asserted).
func (h *hooks) callWithin(method string, params any, guard time.Duration) *message {
	h.t.Helper()
	id, _ := h.w.request(method, params)
	var m *message
	if !h.w.waitUntil(guard, func() bool { m = h.w.replies[id]; return m != nil || h.w.exited }) || m == nil {
		h.t.Fatalf("%s: no reply within %s (the host would have given up after %s)", method, guard, boundedHostWait)
	}
	return m
}

// workloadsOfRun lists the workloads carrying a run's label (any state).
func (h *hooks) workloadsOfRun(backend, runID string) []string {
	h.t.Helper()
	gvr := gvrSandbox
	if backend == "job" {
		gvr = gvrJob
	}
	l, err := h.dyn().Resource(gvr).Namespace(h.namespace()).List(context.Background(),
		metav1.ListOptions{LabelSelector: policy.LabelRunID + "=" + policy.LabelValue(runID)})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, o := range l.Items {
		out = append(out, o.GetName())
	}
	return out
}

func mustContain(t testing.TB, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s %q does not say %q", what, s, w)
		}
	}
}

// With the API server stalled, acquire, resume, release, destroy and probe
// answer (an error; the probe a failed result) before the host gives up,
// and once the stall ends no workload of the stalled acquire exists.
// Release and destroy stay idempotent afterwards.
func TestBoundedHooksStalledAPIServer(t *testing.T) {
	h, fp := proxiedHooks(t, "sandbox")
	l := h.acquire(nil) // through the proxy, no fault: warms the worker's clients
	stall := fp.MustAdd(faultproxy.Rule{Action: faultproxy.Stall})

	runID := "run-stalled-" + randHex(4)
	cases := []struct {
		method string
		params map[string]any
	}{
		{"environmentAcquireLease", h.acquireParams(map[string]any{"runId": runID})},
		{"environmentResumeLease", h.leaseParams(l)},
		{"environmentReleaseLease", h.leaseParams(l)},
		{"environmentDestroyLease", h.leaseParams(l)},
	}
	for _, c := range cases {
		t.Run(c.method, func(t *testing.T) {
			before := stall.Matched()
			m := h.callWithin(c.method, c.params, boundedGuard)
			if m.err == nil {
				t.Fatalf("%s answered %s with the API server stalled, want an error", c.method, clip(m.result))
			}
			t.Logf("%s: %s", c.method, m.err.Message)
			mustContain(t, "error", m.err.Message, c.method+" did not finish within its time budget of 12s",
				"max(timeoutMs) + 14s = 15s, less a margin of 3s")
			if stall.Matched() == before {
				t.Errorf("%s sent no request through the stalled proxy: the test proves nothing", c.method)
			}
		})
	}
	t.Run("environmentProbe", func(t *testing.T) {
		is := is.New(t)
		m := h.callWithin("environmentProbe", h.base(), boundedGuard)
		is.True(m.err == nil)
		var r probeResult
		is.NoErr(json.Unmarshal(m.result, &r))
		is.True(!r.OK)
		is.True(len(r.Diagnostics) > 0)
		// The probe's calls take its context: it ends them at the budget
		// and says which call did not answer.
		mustContain(t, "probe diagnostic", r.Diagnostics[0].Message, "the API server did not answer")
		mustContain(t, "probe diagnostic", r.Diagnostics[0].Message, "context deadline exceeded")
	})

	stall.Release()
	// Whatever the stalled acquire had sent was held, not forwarded: no
	// workload of that run exists, then or later.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stall.WaitNoneStalled(ctx); err != nil {
		t.Fatal(err)
	}
	if names := h.workloadsOfRun("sandbox", runID); len(names) > 0 {
		t.Fatalf("the stalled acquire left workloads behind: %v", names)
	}

	// The lease the stalled release could not delete is released now, and
	// release and destroy stay idempotent.
	is := is.New(t)
	var rc map[string]any
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), &rc)
	is.Equal(rc["state"], "stopped")
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), &rc)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), &rc)
	is.Equal(rc["state"], "destroyed")
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), &rc)
	h.waitRunGone(l, 60*time.Second)
}

// A stalled workload create (everything else answers): the acquire's
// create expires, the worker reads the name back (not there: the held
// create never reached the API server) and says the outcome was unknown.
func TestBoundedAcquireStalledCreate(t *testing.T) {
	h, fp := proxiedHooks(t, "sandbox")
	h.acquire(nil) // the tenant exists; the worker's clients are warm
	stall := fp.MustAdd(faultproxy.Rule{Method: "POST", Path: `/namespaces/[^/]+/sandboxes$`, Action: faultproxy.Stall})
	runID := "run-stalled-create-" + randHex(4)
	m := h.callWithin("environmentAcquireLease", h.acquireParams(map[string]any{"runId": runID}), boundedGuard)
	if m.err == nil {
		t.Fatalf("acquire succeeded with its workload create stalled: %s", clip(m.result))
	}
	t.Logf("acquire: %s", m.err.Message)
	mustContain(t, "error", m.err.Message, "environmentAcquireLease did not finish within its time budget",
		"creating Sandbox "+h.namespace()+"/pc-", "the outcome is unknown", "did not exist when read back")
	if stall.Matched() != 1 {
		t.Errorf("the stall rule matched %d creates, want 1", stall.Matched())
	}
	stall.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stall.WaitNoneStalled(ctx); err != nil {
		t.Fatal(err)
	}
	if names := h.workloadsOfRun("sandbox", runID); len(names) > 0 {
		t.Fatalf("the stalled acquire left workloads behind: %v", names)
	}
}

// A workload create whose response is lost (applied by the API server,
// then the connection reset): the worker deletes the workload it cannot
// know it made, and the error says so and names it. On both backends.
func TestBoundedAcquireLostCreateResponse(t *testing.T) {
	for _, c := range []struct{ backend, resource string }{{"sandbox", "sandboxes"}, {"job", "jobs"}} {
		t.Run(c.backend, func(t *testing.T) {
			h, fp := proxiedHooks(t, c.backend)
			drop := fp.MustAdd(faultproxy.Rule{Method: "POST", Path: `/namespaces/[^/]+/` + c.resource + `$`, Action: faultproxy.DropResponse, Limit: 1})
			runID := "run-lost-" + randHex(4)
			m := h.callWithin("environmentAcquireLease", h.acquireParams(map[string]any{"runId": runID}), boundedGuard)
			if m.err == nil {
				t.Fatalf("acquire succeeded although its create's response was lost: %s", clip(m.result))
			}
			if drop.Matched() != 1 {
				t.Fatalf("the drop rule matched %d creates, want 1", drop.Matched())
			}
			t.Logf("acquire: %s", m.err.Message)
			kind := map[string]string{"sandbox": "Sandbox", "job": "Job"}[c.backend]
			mustContain(t, "error", m.err.Message, "creating "+kind+" "+h.namespace()+"/pc-", "the outcome is unknown",
				"it had been created (UID ", "was deleted again")
			// The create was applied: the cleanup deleted it (Foreground:
			// it is gone once the garbage collector has removed its pods).
			eventually(t, 60*time.Second, "the workload of the lost create is gone", func() error {
				if names := h.workloadsOfRun(c.backend, runID); len(names) > 0 {
					return fmt.Errorf("workloads left: %v", names)
				}
				return nil
			})
			// The next acquire works (the rule applied once).
			l := h.acquire(nil)
			var rc map[string]any
			h.w.mustCall("environmentReleaseLease", h.leaseParams(l), &rc)
		})
	}
}
