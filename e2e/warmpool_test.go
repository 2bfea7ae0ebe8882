package e2e_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
)

var (
	gvrClaim = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxclaims"}
	gvrPool  = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxwarmpools"}
)

// claimBindings remembers, per SandboxClaim of a namespace, the Sandbox its
// status last named (an informer: the claims are gone once released).
type claimBindings struct {
	mu      sync.Mutex
	sandbox map[string]string // claim name -> status.sandbox.name
}

func watchClaims(ctx context.Context, t *testing.T, s *stack, ns string) *claimBindings {
	t.Helper()
	b := &claimBindings{sandbox: map[string]string{}}
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.env.Dynamic(), 0, ns, nil)
	record := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		if name, _, _ := unstructured.NestedString(u.Object, "status", "sandbox", "name"); name != "" {
			b.mu.Lock()
			b.sandbox[u.GetName()] = name
			b.mu.Unlock()
		}
	}
	if _, err := f.ForResource(gvrClaim).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: record, UpdateFunc: func(_, obj any) { record(obj) },
	}); err != nil {
		t.Fatal(err)
	}
	f.Start(ctx.Done())
	for _, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatal("the SandboxClaim informer did not sync")
		}
	}
	return b
}

func (b *claimBindings) of(claim string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sandbox[claim]
}

// TestPaperclipWarmPool: agent runs through the real paperclip-server on
// the sandboxclaim backend. The first acquire applies the tenant with its
// SandboxTemplate and a SandboxWarmPool of 2; once the pool is ready, a run
// takes a warm pod (a pool member handed over to its claim), runs the whole
// agent (git context, the callback bridge, the fake claude, native file
// sync) in it, and its release deletes the claim, whose Sandbox, pod, Secret
// and scoped policy go with it. The pool refills.
func TestPaperclipWarmPool(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	is := is.New(t)
	s := startStack(t, stackOptions{})
	ctx, srv := s.ctx, s.srv
	company, c := s.company(t, "e2e warm pool")
	claims := watchClaims(ctx, t, s, c.tenant)
	cfg := s.config("sandboxclaim")
	cfg["warmPoolSize"] = 2
	e, err := srv.CreateEnvironment(ctx, company.ID, "k8s-warm", cfg)
	is.NoErr(err)
	is.Equal(e.Config["warmPoolSize"], float64(2))

	var res paperclip.ProbeResult
	timed(t, "ProbeEnvironment", func() { res, err = srv.ProbeEnvironment(ctx, company.ID, e.ID) })
	is.NoErr(err)
	if !res.OK {
		t.Fatalf("probe: not ok: %s", res.Raw)
	}

	poolReady := func(n int64) {
		t.Helper()
		err := waitFor(ctx, 2*time.Minute, func() error {
			p, err := s.env.Dynamic().Resource(gvrPool).Namespace(c.tenant).Get(ctx, "paperclip-agent", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if r, _, _ := unstructured.NestedInt64(p.Object, "status", "readyReplicas"); r != n {
				return fmt.Errorf("%d ready pods in the pool, want %d", r, n)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("the tenant's warm pool: %v", err)
		}
	}

	// standbyReady waits until the worker logged n standby claims of this
	// tenant ready, and returns the n-th one's name (the probe's acquire
	// and each run make one; a run takes the one made before it).
	standbyReady := func(n int) string {
		t.Helper()
		prefix := `workload="SandboxClaim ` + c.tenant + "/"
		var name string
		err := waitFor(ctx, 2*time.Minute, func() error {
			lines, err := srv.PluginLines(s.plugin.ID)
			if err != nil {
				return err
			}
			var ready []string
			for _, l := range lines {
				m := l.Text()
				if i := strings.Index(m, prefix); i >= 0 && strings.Contains(m, `msg="standby lease ready"`) {
					name, _, _ := strings.Cut(m[i+len(prefix):], `"`)
					ready = append(ready, name)
				}
			}
			if len(ready) < n {
				return fmt.Errorf("%d standby leases ready for %s, want %d", len(ready), c.tenant, n)
			}
			name = ready[n-1]
			return nil
		})
		if err != nil {
			t.Fatalf("the worker's standby lease: %v", err)
		}
		return name
	}

	for i, name := range []string{"e2e-warm-first", "e2e-warm"} {
		before := c.leaseIDs(ctx, t, e.ID)
		standby := ""
		if i > 0 {
			poolReady(2)                  // refilled after the first run took one
			standby = standbyReady(i + 1) // made after the first run's first command
		}
		run := s.runAgent(t, company.ID, e.ID, name, 3*time.Minute)
		if run.Status != "succeeded" {
			t.Fatalf("run %s: status %q error %q code %q", run.ID, run.Status, deref(run.Error), deref(run.ErrorCode))
		}
		is.Equal(run.ResultJSON["result"], "done (fake)")

		// The host's lease row, released.
		var l paperclip.Lease
		err := waitFor(ctx, releaseDeadline, func() error {
			ls, err := srv.Leases(ctx, e.ID)
			if err != nil {
				return err
			}
			var fresh []paperclip.Lease
			for _, x := range ls {
				if !before[x.ID] {
					fresh = append(fresh, x)
				}
			}
			if len(fresh) != 1 || fresh[0].Status != "released" {
				return fmt.Errorf("%d new lease rows (want 1, released): %+v", len(fresh), fresh)
			}
			l = fresh[0]
			return nil
		})
		if err != nil {
			t.Fatalf("host lease rows: %v", err)
		}
		is.True(l.HeartbeatRunID != nil && *l.HeartbeatRunID == run.ID)
		md := func(k string) string { v, _ := l.Metadata[k].(string); return v }
		is.Equal(md("backend"), "sandboxclaim")
		is.Equal(md("workloadKind"), "SandboxClaim")
		claim := deref(l.ProviderLeaseID)
		sandbox := claims.of(claim)
		if sandbox == "" {
			t.Fatalf("claim %s/%s never named a Sandbox", c.tenant, claim)
		}
		warm := sandbox != claim // the cold path names the Sandbox like the claim
		t.Logf("run %s: claim %s ran in Sandbox %s (warm %t)", run.ID, claim, sandbox, warm)
		if i > 0 && !warm {
			t.Errorf("run %s: the pool had 2 ready pods, yet claim %s started cold", run.ID, claim)
		}
		if i > 0 {
			// The second run took the standby the worker made after the
			// first acquire, its pod known at acquire.
			is.Equal(claim, standby)
			is.True(md("podUid") != "")
		}

		// The agent's commands ran in the claim's pod (named like its
		// Sandbox).
		s.nodeLog.mu.Lock()
		execs := strings.Count(s.nodeLog.buf.String(), "execnode: exec "+c.tenant+"/"+sandbox+"/")
		s.nodeLog.mu.Unlock()
		t.Logf("the run's pod %s served %d execs", sandbox, execs)
		is.True(execs >= 10)

		// Released: the claim, its Sandbox and pod, the run Secret and the
		// scoped policy are gone.
		dyn := s.env.Dynamic()
		err = waitFor(ctx, releaseDeadline, func() error {
			for _, o := range []struct {
				gvr  schema.GroupVersionResource
				name string
			}{{gvrClaim, claim}, {gvrSandbox, sandbox}, {gvrPod, sandbox}, {gvrSecret, claim + "-env"}, {gvrNetworkPolicy, claim + "-egress"}} {
				_, err := dyn.Resource(o.gvr).Namespace(c.tenant).Get(ctx, o.name, metav1.GetOptions{})
				if !apierrors.IsNotFound(err) {
					return fmt.Errorf("%s %s/%s: still there (%v)", o.gvr.Resource, c.tenant, o.name, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("run %s: not released: %v", run.ID, err)
		}
	}
	synced := s.fileSyncCalls(t)
	is.True(synced["environmentSyncIn"] >= 2) // each run's workspace went up through the plugin
	poolReady(2)                              // and the pool refilled
}
