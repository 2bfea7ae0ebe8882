package plugin

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// The standby branch of an acquire in process. No controller runs here:
// the standbys are made by hand (their pods are names only), two of them,
// so that the acquire takes the first and the refill makes none (the
// second is there).

var gvrClaimFake = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxclaims"}

// standbyFakeConfig is warmConfig with one standby lease.
func standbyFakeConfig() map[string]any {
	cfg := warmConfig()
	cfg["standbyLeases"] = 1
	return cfg
}

// injectStandbys makes two standbys of acme's env-1 under
// standbyFakeConfig and hands them to the worker; stops counts the
// stops of their pods' follows.
func injectStandbys(t *testing.T, f *fakeCluster) (ns string, sbs []*standby, stops *atomic.Int32) {
	t.Helper()
	is := is.New(t)
	ctx := context.Background()
	cfg, err := f.p.parseConfig(standbyFakeConfig())
	is.NoErr(err)
	backend, err := f.p.backend("sandboxclaim")
	is.NoErr(err)
	ns, err = f.p.tenantNamespace(cfg, "acme")
	is.NoErr(err)
	key := newStandbyKey(ns, "acme", "env-1", backend, cfg)
	n, _ := f.cl.standbys.due(key, 2)
	is.Equal(n, 2)
	stops = &atomic.Int32{}
	for range n {
		values, ends, err := f.p.standbyValues(cfg, "acme", "env-1", ns, backend)
		is.NoErr(err)
		w, err := f.e.Create(ctx, backend, ns, values, nil)
		is.NoErr(err)
		objs, _, err := f.p.createRunObjects(ctx, f.cl, f.p.Catalog.Used(resource.UseRun), ns, values, w)
		is.NoErr(err)
		sb := &standby{key: key, obj: w, values: values, ends: ends, runObjs: objs,
			pod: &leaseState{podName: w.GetName() + "-pod", podUID: "pod-uid-" + w.GetName(), stop: func() { stops.Add(1) }}}
		f.cl.standbys.made(key, sb)
		sbs = append(sbs, sb)
	}
	return ns, sbs, stops
}

// A standby whose run objects cannot be made is deleted, not kept: a run
// that took it would have none.
func TestStandbyWithoutItsRunObjectsIsDeleted(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ctx := context.Background()
	cfg, err := f.p.parseConfig(standbyFakeConfig())
	is.NoErr(err)
	backend, err := f.p.backend("sandboxclaim")
	is.NoErr(err)
	ns, err := f.p.tenantNamespace(cfg, "acme")
	is.NoErr(err)
	f.dyn.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errFake)
	})
	var deleted []string
	f.dyn.PrependReactor("delete", "sandboxclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		deleted = append(deleted, a.(k8stesting.DeleteAction).GetName())
		return false, nil, nil
	})
	sb := f.p.makeStandby(f.cl, newStandbyKey(ns, "acme", "env-1", backend, cfg), cfg, "acme", "env-1", backend)
	is.True(sb == nil)
	claims, _ := f.p.Catalog.Get("sandboxclaim")
	left, err := f.e.List(ctx, claims, ns, "")
	is.NoErr(err)
	is.Equal(len(left), 0)    // nothing left behind
	is.Equal(len(deleted), 1) // the claim it made
}

// A run with a task egress grant has other run objects than the
// standby's: it gets a workload of its own, and the standby stays for the
// next run.
func TestStandbyNotTakenForARunOfOtherRunObjects(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	_, sbs, stops := injectStandbys(t, f)
	in := acquireParams("acme")
	in.Config = standbyFakeConfig()
	in.ExecutionWorkspaceSettings = map[string]any{"networkEgress": map[string]any{"allowFqdns": []any{"example.com"}}}
	l, err := f.p.AcquireLease(context.Background(), in)
	is.NoErr(err)
	is.True(*l.ProviderLeaseID != sbs[0].obj.GetName())
	is.True(*l.ProviderLeaseID != sbs[1].obj.GetName())
	is.Equal(stops.Load(), int32(0)) // both still followed, still there to take
	in.ExecutionWorkspaceSettings = nil
	l, err = f.p.AcquireLease(context.Background(), in)
	is.NoErr(err)
	is.Equal(*l.ProviderLeaseID, sbs[0].obj.GetName()) // the next run takes the first
}

// A take whose patch landed but whose answer was lost (the standby now
// carries this run's labels, and the take says it was taken by another):
// the run gets a workload of its own, and the standby, which no lease
// holds, is deleted.
func TestStandbyTakeWithALostAnswerIsDeleted(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ctx := context.Background()
	ns, sbs, _ := injectStandbys(t, f)
	lost := sbs[0].obj.GetName()
	f.dyn.PrependReactor("patch", "sandboxclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.PatchAction).GetName() != lost {
			return false, nil, nil
		}
		if _, _, err := k8stesting.ObjectReaction(f.dyn.Tracker())(a); err != nil {
			return true, nil, err
		}
		return true, nil, errors.New("connection reset by peer")
	})
	wt, err := f.dyn.Resource(gvrClaimFake).Namespace(ns).Watch(ctx, metav1.ListOptions{})
	is.NoErr(err)
	defer wt.Stop()

	in := acquireParams("acme")
	in.Config = standbyFakeConfig()
	in.ExecutionWorkspaceSettings = nil // no task grant: the standby serves it
	l, err := f.p.AcquireLease(ctx, in)
	is.NoErr(err)
	is.True(*l.ProviderLeaseID != lost) // a workload of its own

	bound := time.After(time.Minute) // a bound on a hang, not a measure
	for deleted := false; !deleted; {
		select {
		case ev := <-wt.ResultChan():
			if o, ok := ev.Object.(metav1.Object); ok && ev.Type == watch.Deleted && o.GetName() == lost {
				deleted = true
			}
		case <-bound:
			t.Fatalf("the standby %s, taken by a take whose answer was lost, was not deleted", lost)
		}
	}
	// Its run Secret and policy go with it through their owner reference
	// (the garbage collector's, on a cluster).
}
