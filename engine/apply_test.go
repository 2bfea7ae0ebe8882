package engine_test

import (
	"context"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// The tenant set applies the wanted objects, namespace first; objects whose
// conditions no longer hold are pruned.
func TestApplyTenantOrderAndPrune(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job")
	c, e := f.c, f.e
	ctx := context.Background()
	applied, err := e.Apply(ctx, c.Used(resource.UseTenant), "paperclip-acme", f.values)
	is.NoErr(err)
	is.True(len(applied) > 0)
	is.Equal(applied[0].Resource.Name, "namespace") // cluster-scoped first
	kinds := map[string]int{}
	for _, a := range applied {
		if a.Object != nil {
			kinds[a.Object.GetKind()]++
		}
	}
	is.Equal(kinds["NetworkPolicy"], 2) // deny + standard egress
	is.Equal(kinds["CiliumNetworkPolicy"], 0)
	var applies int
	for _, a := range f.dyn.Actions() {
		if a.GetVerb() == "patch" {
			applies++
		}
	}
	is.Equal(applies, 7) // server-side apply, not create: one per tenant object

	// Switch to cilium: the standard egress policy is pruned, the CNP applied.
	cfg := f.values["config"].(map[string]any)
	cfg["egressMode"] = "cilium"
	applied, err = e.Apply(ctx, c.Used(resource.UseTenant), "paperclip-acme", f.values)
	is.NoErr(err)
	var pruned, cnp bool
	for _, a := range applied {
		if a.Pruned && a.Resource.Name == "networkpolicy-egress" {
			pruned = true
		}
		if a.Object != nil && a.Object.GetKind() == "CiliumNetworkPolicy" {
			cnp = true
		}
	}
	is.True(pruned)
	is.True(cnp)
	np, _ := c.Get("networkpolicy-egress")
	_, err = e.Get(ctx, engine.Ref{Resource: np, Namespace: "paperclip-acme", Name: "paperclip-egress-allow"})
	is.True(engine.IsGone(err))
}

// Without Cilium installed, standard mode still applies (the CNP is neither
// wanted nor served), and cilium mode says what to install.
func TestApplyWithoutCilium(t *testing.T) {
	is := is.New(t)
	f := newFixture(t, "standard-job", "cilium.io")
	ctx := context.Background()
	tenant := f.c.Used(resource.UseTenant)
	_, err := f.e.Apply(ctx, tenant, "paperclip-acme", f.values)
	is.NoErr(err)
	f.values["config"].(map[string]any)["egressMode"] = "cilium"
	_, err = f.e.Apply(ctx, tenant, "paperclip-acme", f.values)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "Install Cilium"))
}
