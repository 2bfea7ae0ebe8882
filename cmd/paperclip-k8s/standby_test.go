package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// waitLog waits for the worker's n-th log record (a `log` request)
// whose message is msg, and returns its meta.
func (w *proc) waitLog(t testing.TB, msg string, n int) map[string]any {
	t.Helper()
	var meta map[string]any
	ok := w.waitUntil(callTimeout, func() bool {
		seen := 0
		for _, m := range w.out {
			if m.method != "log" {
				continue
			}
			var rec struct {
				Message string         `json:"message"`
				Meta    map[string]any `json:"meta"`
			}
			if json.Unmarshal(m.params, &rec) == nil && rec.Message == msg {
				if seen++; seen == n {
					meta = rec.Meta
					return true
				}
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("the worker logged %q fewer than %d times", msg, n)
	}
	return meta
}

// standbyClaims lists the tenant's claims that are still standbys (no
// run's labels).
func (h *hooks) standbyClaims() []unstructured.Unstructured {
	h.t.Helper()
	l, err := h.dyn().Resource(gvrClaim).Namespace(h.namespace()).List(context.Background(), metav1.ListOptions{LabelSelector: "!paperclip.io/run-id"})
	if err != nil {
		h.t.Fatal(err)
	}
	return l.Items
}

// The worker keeps a standby claim per environment, made and Ready after
// the environment's first acquire; the next acquire takes it (the lease is
// that claim, relabelled for the run, its deadline moved, its pod pinned
// and already known) and the worker makes the next. A standby is nobody's
// lease until taken, and the worker deletes its standbys when the host
// shuts it down.
func TestStandbyLease(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	ctx := context.Background()

	first := h.acquire(nil)
	is.Equal(first.Metadata["podUid"], nil) // nothing was ready ahead of the first
	ready := h.w.waitLog(t, "standby lease ready", 1)
	standbys := h.standbyClaims()
	is.Equal(len(standbys), 1)
	sb := standbys[0]
	is.Equal(ready["workload"], "SandboxClaim "+h.namespace()+"/"+sb.GetName())
	_, hasRun := sb.GetLabels()["paperclip.io/run-id"]
	is.True(!hasRun) // made before any run
	is.Equal(sb.GetLabels()["paperclip.io/environment-id"], "env-"+h.company)

	// A standby is no lease: a hook naming it is refused, and it is kept.
	e := h.w.callErr("environmentResumeLease", h.with(map[string]any{"providerLeaseId": sb.GetName()}))
	is.True(e != nil && strings.Contains(e.Message, "it is a standby no run has taken"))

	// The next acquire takes it.
	before := time.Now()
	l := h.acquire(nil)
	is.Equal(l.id(), sb.GetName())
	is.Equal(l.meta("workloadUid"), string(sb.GetUID()))
	claim, err := h.dyn().Resource(gvrClaim).Namespace(h.namespace()).Get(ctx, l.id(), metav1.GetOptions{})
	is.NoErr(err)
	is.True(claim.GetLabels()["paperclip.io/run-id"] != "") // the run's labels: no standby any more
	at, _, _ := unstructured.NestedString(claim.Object, "spec", "lifecycle", "shutdownTime")
	is.Equal(at, *l.ExpiresAt)
	exp, err := time.Parse(time.RFC3339, at)
	is.NoErr(err)
	is.True(exp.After(before.Add(23 * time.Hour))) // the run's deadline, not the standby's 10 minutes
	_, _, pod := h.claimPod(l)
	is.Equal(l.meta("podUid"), string(pod.UID)) // known when taken
	is.Equal(claim.GetAnnotations()["paperclip.io/pod-uid"], string(pod.UID))
	is.Equal(pod.Labels[runPodLabel], l.id())

	// Its first command runs in that pod with the run's environment.
	sec, err := h.kube().CoreV1().Secrets(h.namespace()).Get(ctx, l.id()+"-env", metav1.GetOptions{})
	is.NoErr(err)
	_, secRun := sec.Labels["paperclip.io/run-id"]
	is.True(!secRun) // made with the standby, before the run: the acquire made none
	is.Equal(controller(sec.OwnerReferences), string(sb.GetUID()))
	r := h.exec(l, `printf %s "$BOOTSTRAP_TOKEN"`, nil)
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, string(sec.Data["BOOTSTRAP_TOKEN"]))

	// The worker makes the next standby.
	next := h.w.waitLog(t, "standby lease ready", 2)
	is.True(next["workload"] != ready["workload"])

	// Release ends the run's claim only.
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.w.mustCall("environmentReleaseLease", h.leaseParams(first), nil)
	left := h.standbyClaims()
	is.Equal(len(left), 1)

	// Shutdown deletes the standby.
	h.w.mustCall("shutdown", map[string]any{}, nil)
	h.waitObject(gvrClaim, h.namespace(), left[0].GetName(), time.Minute, "deleted at shutdown", func(u *unstructured.Unstructured) bool { return u == nil })
}

// A standby another worker took first (it carries a run id) is not
// taken again: the acquire makes a claim of its own and leaves that one
// alone.
func TestStandbyTakenByAnother(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	ctx := context.Background()
	h.acquire(nil)
	h.w.waitLog(t, "standby lease ready", 1)
	sb := h.standbyClaims()[0]
	patch := []byte(`{"metadata":{"labels":{"paperclip.io/run-id":"someone-elses"}}}`)
	_, err := h.dyn().Resource(gvrClaim).Namespace(h.namespace()).Patch(ctx, sb.GetName(), types.MergePatchType, patch, metav1.PatchOptions{})
	is.NoErr(err)

	l := h.acquire(nil)
	is.True(l.id() != sb.GetName())
	r := h.exec(l, "echo own", nil)
	is.Equal(r.Stdout, "own\n")
	other, err := h.dyn().Resource(gvrClaim).Namespace(h.namespace()).Get(ctx, sb.GetName(), metav1.GetOptions{})
	is.NoErr(err) // still there: it is another's run now
	is.Equal(other.GetLabels()["paperclip.io/run-id"], "someone-elses")
}

// A config change leaves the environment's standbys of the old config
// untaken: the next acquire deletes them and makes one under the new.
func TestStandbyConfigChange(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	h.acquire(nil)
	h.w.waitLog(t, "standby lease ready", 1)
	old := h.standbyClaims()[0]

	h.config["execMaxOutputBytes"] = 2 << 20
	l := h.acquire(nil)
	is.True(l.id() != old.GetName())
	h.waitObject(gvrClaim, h.namespace(), old.GetName(), time.Minute, "deleted after the config changed", func(u *unstructured.Unstructured) bool { return u == nil })
	h.w.waitLog(t, "standby lease ready", 2)
	now := h.standbyClaims()
	is.Equal(len(now), 1)
	is.True(now[0].GetName() != old.GetName())
}

// A standby's login environment is read when it is made, and serves a
// taken lease whose first command is sent alone; when another command
// runs first (it may write the profile, as here), the first command sent
// alone reads it again, as on any lease.
func TestStandbyLoginEnvironment(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandboxclaim", map[string]any{"warmPoolSize": 1})
	h.acquire(nil)
	h.w.waitLog(t, "standby lease ready", 1)
	l := h.acquire(nil)
	is.True(l.meta("podUid") != "") // a standby taken with its pod known
	r := h.exec(l, "sh", map[string]any{"stdin": "export FOO='from the profile'\n", "args": []string{"-c", `cat > "$HOME/.profile"`}})
	is.Equal(r.code(), 0)
	r = h.exec(l, `printf %s "$FOO"`, nil)
	is.Equal(r.Stdout, "from the profile")
}
