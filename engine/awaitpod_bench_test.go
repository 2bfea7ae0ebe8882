package engine_test

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// BenchmarkClusterAwaitPod measures a lease's first wait on the local
// control plane: create a Sandbox, AwaitPod until it and its pod are Ready
// (the informers on the workload and the namespace's pod changes, FindPod),
// release. kwok makes pods ready at once, so this is the provider's, the
// stand-in controller's and the API server's share of the latency.
func BenchmarkClusterAwaitPod(b *testing.B) {
	benchClusterSandbox(b, "bench-await", "pc-await", func(values map[string]any) {
		// Released pods leave at the garbage collector's pace: a quota of
		// 20 would refuse the 21st while earlier ones are still going.
		values["config"].(map[string]any)["resourceQuota"] = map[string]any{"pods": "1000"}
	}, func(ctx context.Context, e *engine.Engine, sb *resource.Resource, w *unstructured.Unstructured) error {
		_, _, err := e.AwaitPod(ctx, sb, w)
		return err
	})
}
