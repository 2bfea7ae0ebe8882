package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/enginetest"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
)

// A Sandbox the claim names but does not control, or that lacks the
// claim's UID label, is still refused (the trust check), but not silently:
// FindPod's error and the *WaitError of a wait that times out name the
// Sandbox, the field that named it, the claim and its UID, why it was not
// used and what to do.
func TestViaObjectNotUsedSaysWhy(t *testing.T) {
	running := map[string]any{"phase": "Running", "conditions": []any{readyCond("Ready")}}
	for _, tc := range []struct {
		name string
		// foreign: the Sandbox is controlled by another object (else it
		// is the claim's but lacks its UID label).
		foreign bool
		says    func(claim *unstructured.Unstructured) []string
	}{
		{"not controlled by the claim", true, func(claim *unstructured.Unstructured) []string {
			return []string{
				"Sandbox ns1/pool-x7lch named by status.sandbox.name of SandboxClaim ns1/" + claim.GetName() + " is not controlled by it (uid " + string(claim.GetUID()) +
					"; its controller is ConfigMap other, uid uid-other), so neither it nor its pods are used",
				"check the controller that writes status.sandbox.name",
			}
		}},
		{"without the claim's UID label", false, func(claim *unstructured.Unstructured) []string {
			return []string{
				"Sandbox ns1/pool-x7lch named by status.sandbox.name of SandboxClaim ns1/" + claim.GetName() +
					" does not match the selector agents.x-k8s.io/claim-uid=" + string(claim.GetUID()) +
					` of sandboxclaim.yaml (its label agents.x-k8s.io/claim-uid is "another-claim"), so neither it nor its pods are used`,
				"check the controller that writes status.sandbox.name",
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			e, dyn := enginetest.New(t, testutil.Catalog(t))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var claim, sandbox *unstructured.Unstructured
			if tc.foreign {
				other := &unstructured.Unstructured{Object: map[string]any{}}
				other.SetAPIVersion("v1")
				other.SetKind("ConfigMap")
				other.SetName("other")
				other.SetNamespace("ns1")
				other.SetUID("uid-other")
				claim, sandbox = claimWithSandbox(t, ctx, e, dyn, other, map[string]string{})
			} else {
				claim, sandbox = claimWithSandbox(t, ctx, e, dyn, nil, map[string]string{"agents.x-k8s.io/claim-uid": "another-claim"})
			}
			podIn(t, ctx, dyn, controlled("v1", "Pod", "pool-x7lch", sandbox, runLabel), running)
			s, _ := e.Catalog.Get("sandboxclaim")
			want := tc.says(claim)

			_, err := e.FindPod(ctx, s, claim)
			is.True(errors.Is(err, engine.ErrNoPod))
			var np *engine.NoPodError
			is.True(errors.As(err, &np))
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("FindPod's error %q does not say %q", err, w)
				}
			}

			sandboxGets := requestsTo(dyn, "get", "sandboxes")
			started := enginetest.WatchStarts(dyn)
			wctx, stop := context.WithCancel(ctx)
			done := make(chan podResult, 1)
			go func() {
				_, p, err := e.AwaitPod(wctx, s, claim)
				done <- podResult{p, err}
			}()
			<-sandboxGets // readyNow: the claim is Ready, its Sandbox not used
			<-started
			<-started     // the claim and the pods are watched
			<-sandboxGets // the first check: still not used
			stop()
			r := <-done
			is.True(r.pod == nil)
			var we *engine.WaitError
			is.True(errors.As(r.err, &we))
			t.Log(r.err)
			for _, w := range want {
				if !strings.Contains(r.err.Error(), w) {
					t.Errorf("the wait's error %q does not say %q", r.err, w)
				}
				if !strings.Contains(we.Last.String(), w) { // what the plugin shows of it
					t.Errorf("the wait's last status %q does not say %q", we.Last, w)
				}
			}
		})
	}
}
