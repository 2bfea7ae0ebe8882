package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// requestsTo signals each request of verb on res (a resource's plural)
// the fake client gets, as it gets it.
func requestsTo(dyn *dynfake.FakeDynamicClient, verb, res string) <-chan struct{} {
	ch := make(chan struct{}, 64)
	dyn.PrependReactor(verb, res, func(k8stesting.Action) (bool, runtime.Object, error) {
		ch <- struct{}{}
		return false, nil, nil
	})
	return ch
}

// countOf counts the requests of verb on res the fake client recorded.
func countOf(dyn *dynfake.FakeDynamicClient, verb, res string) int {
	n := 0
	for _, a := range dyn.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == res {
			n++
		}
	}
	return n
}

// viaWait is a wait (AwaitPod) on a claim bound to its Sandbox pool-x7lch,
// whose pod (carrying the run's label) starts Pending, started and synced
// with: it has read the pod once to see whether it may answer at once
// (readyNow), watches the claim and the pods, and its first check has read
// the pod. podGets and sandboxGets signal the wait's reads from then on.
type viaWait struct {
	e                    *engine.Engine
	dyn                  *dynfake.FakeDynamicClient
	claim, sandbox, pod  *unstructured.Unstructured
	podGets, sandboxGets <-chan struct{}
	done                 <-chan podResult
	cancel               context.CancelFunc
}

// startViaWait starts a viaWait; before, when set, runs before the wait
// starts (objects the wait must find already there).
func startViaWait(t *testing.T, before func(v *viaWait)) *viaWait {
	t.Helper()
	e, dyn := enginetest.New(t, testutil.Catalog(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	v := &viaWait{e: e, dyn: dyn, cancel: cancel}
	v.claim, v.sandbox = claimWithSandbox(t, ctx, e, dyn, nil, nil) // the claim is Ready
	v.pod = podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", v.sandbox, runLabel), map[string]any{"phase": "Pending"})
	if before != nil {
		before(v)
	}
	v.podGets = requestsTo(dyn, "get", "pods")
	v.sandboxGets = requestsTo(dyn, "get", "sandboxes")
	started := enginetest.WatchStarts(dyn)
	dyn.ClearActions()
	s, _ := e.Catalog.Get("sandboxclaim")
	done := make(chan podResult, 1)
	go func() {
		_, p, err := e.AwaitPod(ctx, s, v.claim)
		done <- podResult{p, err}
	}()
	v.done = done
	<-v.podGets // readyNow: the claim is Ready, its pod is not
	<-v.sandboxGets
	<-started
	<-started   // the claim and the pods are watched
	<-v.podGets // the first check
	return v
}

// next waits for a signal of ch; the test fails when the wait ends first.
func (v *viaWait) next(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case r := <-v.done:
		t.Fatalf("the wait ended first: pod %v, error %v", r.pod, r.err)
	}
}

// setPod replaces the pod's status (and labels, when set) on the server.
func (v *viaWait) setPod(t *testing.T, pod *unstructured.Unstructured, status map[string]any) {
	t.Helper()
	pod.Object["status"] = status
	if _, err := v.dyn.Resource(gvrPod).Namespace("ns1").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A wait on a claim whose pod is found through its Sandbox reads the
// Sandbox once to find the pod and once more when it ends the wait, not at
// every change of the pod: a check that a pod change starts reads the pod
// only. (Without the memo the wait reads the Sandbox at every check, here
// 2 + 4 times.)
func TestAwaitPodViaReadsTheSandboxOnce(t *testing.T) {
	is := is.New(t)
	v := startViaWait(t, nil)
	steps := []map[string]any{
		{"phase": "Pending", "conditions": []any{map[string]any{"type": "PodScheduled", "status": "True"}}},
		{"phase": "Running"},
		{"phase": "Running", "conditions": []any{map[string]any{"type": "ContainersReady", "status": "True"}}},
		{"phase": "Running", "conditions": []any{readyCond("Ready")}},
	}
	for i, st := range steps {
		v.setPod(t, v.pod, st)
		if i < len(steps)-1 {
			v.next(t, v.podGets) // its check
		}
	}
	r := <-v.done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), v.pod.GetUID())
	sandboxes, pods := countOf(v.dyn, "get", "sandboxes"), countOf(v.dyn, "get", "pods")
	t.Logf("%d pod changes: %d Sandbox reads, %d pod reads", len(steps), sandboxes, pods)
	is.Equal(sandboxes, 2) // readyNow's walk, and the check that ends the wait
	// readyNow, the first check, one per change: each check reads the pod.
	// An informer that lists again (its watch closed under load) adds a
	// check, which reads the pod and, with the memo, not the Sandbox.
	is.True(pods >= 2+len(steps))
}

// A Sandbox replaced under the same name (another UID) while the wait
// remembers the old one: the new Sandbox's pod is not taken through the
// old one, the chain is walked again, and the wait ends on the new pod.
func TestAwaitPodViaWalksAgainWhenTheSandboxIsReplaced(t *testing.T) {
	is := is.New(t)
	v := startViaWait(t, nil)
	ctx := context.Background()
	is.NoErr(v.dyn.Resource(gvrPod).Namespace("ns1").Delete(ctx, v.pod.GetName(), metav1.DeleteOptions{}))
	is.NoErr(v.dyn.Resource(gvrSandbox).Namespace("ns1").Delete(ctx, v.sandbox.GetName(), metav1.DeleteOptions{}))
	again, err := v.dyn.Resource(gvrSandbox).Namespace("ns1").Create(ctx,
		controlled("agents.x-k8s.io/v1beta1", "Sandbox", "pool-x7lch", v.claim, map[string]string{"agents.x-k8s.io/claim-uid": string(v.claim.GetUID())}), metav1.CreateOptions{})
	is.NoErr(err)
	is.True(again.GetUID() != v.sandbox.GetUID())
	pod := podIn(t, ctx, v.dyn, controlled("v1", "Pod", "pool-x7lch", again, runLabel), map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	r := <-v.done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pod.GetUID())
}

// A claim that the controller binds to another Sandbox (status.sandbox.name
// changes) while the wait remembers the first: the wait reads the one named
// now and ends on its pod.
func TestAwaitPodViaFollowsARebind(t *testing.T) {
	is := is.New(t)
	var other *unstructured.Unstructured
	v := startViaWait(t, func(v *viaWait) {
		ctx := context.Background()
		sb, err := v.dyn.Resource(gvrSandbox).Namespace("ns1").Create(ctx,
			controlled("agents.x-k8s.io/v1beta1", "Sandbox", "pool-b", v.claim, map[string]string{"agents.x-k8s.io/claim-uid": string(v.claim.GetUID())}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		other = podIn(t, ctx, v.dyn, controlled("v1", "Pod", "pool-b", sb, runLabel), map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	})
	s, _ := v.e.Catalog.Get("sandboxclaim")
	enginetest.SetStatus(t, v.e, v.claim, s, map[string]any{"conditions": []any{readyCond("Ready")}, "sandbox": map[string]any{"name": "pool-b"}})
	r := <-v.done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), other.GetUID())
}

// A remembered Sandbox that is deleted while its pod lingers (the garbage
// collector has not reached it): the pod turning Ready does not end the
// wait, because the check that would end it reads the Sandbox again; the
// wait's error says the Sandbox does not exist.
func TestAwaitPodViaRereadsTheSandboxBeforeItEnds(t *testing.T) {
	is := is.New(t)
	v := startViaWait(t, nil)
	is.NoErr(v.dyn.Resource(gvrSandbox).Namespace("ns1").Delete(context.Background(), v.sandbox.GetName(), metav1.DeleteOptions{}))
	v.setPod(t, v.pod, map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	v.next(t, v.sandboxGets) // the check reads the Sandbox again: gone
	v.next(t, v.sandboxGets) // and walks again: still gone
	v.cancel()
	r := <-v.done
	is.True(r.pod == nil)
	var we *engine.WaitError
	is.True(errors.As(r.err, &we))
	is.True(strings.Contains(r.err.Error(), "Sandbox ns1/pool-x7lch named by status.sandbox.name of SandboxClaim ns1/"+v.claim.GetName()+" does not exist"))
}

// A remembered Sandbox that comes to name another pod of its own (its
// pod-name annotation) while its first pod stays Pending: the new pod's
// change drops what the wait remembered, it reads the Sandbox again and
// ends on the new pod.
func TestAwaitPodViaWalksAgainWhenTheSandboxNamesAnotherPod(t *testing.T) {
	is := is.New(t)
	v := startViaWait(t, nil)
	ctx := context.Background()
	sb, err := v.dyn.Resource(gvrSandbox).Namespace("ns1").Get(ctx, v.sandbox.GetName(), metav1.GetOptions{})
	is.NoErr(err)
	sb.SetAnnotations(map[string]string{"agents.x-k8s.io/pod-name": "pool-x7lch-2"})
	sb.SetResourceVersion("changed")
	_, err = v.dyn.Resource(gvrSandbox).Namespace("ns1").Update(ctx, sb, metav1.UpdateOptions{})
	is.NoErr(err)
	pod := podIn(t, ctx, v.dyn, controlled("v1", "Pod", "pool-x7lch-2", v.sandbox, runLabel), map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	r := <-v.done
	is.NoErr(r.err)
	is.Equal(r.pod.GetUID(), pod.GetUID())
}
