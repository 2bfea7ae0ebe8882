package engine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
)

// BenchmarkClusterAwaitPod measures a lease's first wait on the local
// control plane: create a Sandbox, AwaitPod until it and its pod are Ready
// (the informers on the workload and the namespace's pod changes, FindPod),
// release. kwok makes pods ready at once, so this is the provider's, the
// stand-in controller's and the API server's share of the latency.
func BenchmarkClusterAwaitPod(b *testing.B) {
	if env == nil {
		b.Skip("no control plane")
	}
	vc := valuestest.LoadShipped(b, "standard-cidrs-sandbox")
	e := realEngineB(b)
	ctx := context.Background()
	ns := fmt.Sprintf("bench-await-%x", time.Now().UnixNano()&0xffffff)
	vc.Values["namespace"] = ns
	// Released pods leave at the garbage collector's pace: a quota of 20
	// would refuse the 21st while earlier ones are still going.
	vc.Values["config"].(map[string]any)["resourceQuota"] = map[string]any{"pods": "1000"}
	if _, err := e.Apply(ctx, e.Catalog.Used(resource.UseTenant), ns, vc.Values); err != nil {
		b.Fatal(err)
	}
	sb, _ := e.Catalog.Get("sandbox")
	run := vc.Values["run"].(map[string]any)
	run["deadlineTime"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	i := 0
	for b.Loop() {
		i++
		run["name"] = fmt.Sprintf("pc-await-%d", i)
		w, err := e.Create(ctx, sb, ns, vc.Values, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := e.AwaitPod(ctx, sb, w); err != nil {
			b.Fatal(err)
		}
		if _, err := e.Release(ctx, engine.RefOf(sb, w)); err != nil {
			b.Fatal(err)
		}
	}
}
