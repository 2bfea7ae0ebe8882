package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matryer/is"
	dynfake "k8s.io/client-go/dynamic/fake"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// listsAndWatches counts the list and watch requests the fake client got.
func listsAndWatches(dyn *dynfake.FakeDynamicClient) int {
	n := 0
	for _, a := range dyn.Actions() {
		if v := a.GetVerb(); v == "list" || v == "watch" {
			n++
		}
	}
	return n
}

// A workload that is already Ready with a Ready pod (a warm pod handed
// over before the first command) is answered with reads alone: AwaitPod
// starts no informer (no list, no watch), directly and through via hops,
// and returns the same pod as the watches would.
func TestAwaitPodReadyNowStartsNoWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	running := map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}}
	t.Run("sandbox", func(t *testing.T) {
		is := is.New(t)
		f := newFixture(t, "cilium-sandbox")
		sb, w := f.workload(t, "sandbox")
		w = enginetest.SetStatus(t, f.e, w, sb, map[string]any{"conditions": []any{readyCond("Ready")}})
		pod := f.addPod(t, w, running)
		f.dyn.ClearActions()
		gotW, gotPod, err := f.e.AwaitPod(ctx, sb, w)
		is.NoErr(err)
		is.Equal(gotPod.GetUID(), pod.GetUID())
		is.Equal(gotW.GetUID(), w.GetUID())
		is.Equal(listsAndWatches(f.dyn), 0)
	})
	t.Run("sandboxclaim via its Sandbox", func(t *testing.T) {
		is := is.New(t)
		e, dyn := enginetest.New(t, testutil.Catalog(t))
		claim, sandbox := claimWithSandbox(t, ctx, e, dyn, nil, nil)
		pod := podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel), running)
		s, _ := e.Catalog.Get("sandboxclaim")
		dyn.ClearActions()
		_, got, err := e.AwaitPod(ctx, s, claim)
		is.NoErr(err)
		is.Equal(got.GetUID(), pod.GetUID())
		is.Equal(listsAndWatches(dyn), 0)
	})
}

// The fast path keeps every check of the watched path: a Ready claim
// whose Ready pod is not controlled by its Sandbox (a broken owner chain)
// is not taken; AwaitPod watches instead, and the pod never counts.
func TestAwaitPodReadyNowKeepsTheOwnerChecks(t *testing.T) {
	is := is.New(t)
	e, dyn := enginetest.New(t, testutil.Catalog(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	claim, _ := claimWithSandbox(t, ctx, e, dyn, nil, nil)
	podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", claim, runLabel), // controlled by the claim, not its Sandbox
		map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}})
	s, _ := e.Catalog.Get("sandboxclaim")
	started := enginetest.WatchStarts(dyn)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, p, err := e.AwaitPod(wctx, s, claim)
		if p != nil {
			err = errors.New("returned the pod " + p.GetName())
		}
		done <- err
	}()
	<-started
	<-started // the pods and the claim are watched: no shortcut was taken
	stop()
	var we *engine.WaitError
	is.True(errors.As(<-done, &we))
}
