package engine_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
)

// BenchmarkRender renders the sandbox backend (with its $use fragment).
func BenchmarkRender(b *testing.B) {
	c := testutil.Catalog(b)
	vc := valuestest.LoadShipped(b, "cilium-sandbox")
	sb, _ := c.Get("sandbox")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := sb.Render(vc.Values); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvaluate evaluates the Sandbox readiness rules on a recorded
// object, as Wait does on every watch event.
func BenchmarkEvaluate(b *testing.B) {
	c := testutil.Catalog(b)
	sb, _ := c.Get("sandbox")
	obj, err := os.ReadFile(filepath.Join("..", "testdata", "objects", "sandbox-ready.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if st := sb.Evaluate(obj); st.State != resource.Ready {
			b.Fatal(st)
		}
	}
}

// BenchmarkClusterClaimToReady measures claim → Ready (watch) → release of a
// Sandbox on the local control plane (kwok makes pods ready at once, so
// this is the provider's and the API server's share of the latency).
func BenchmarkClusterClaimToReady(b *testing.B) {
	benchClusterSandbox(b, "bench", "pc-bench", nil, func(ctx context.Context, e *engine.Engine, sb *resource.Resource, w *unstructured.Unstructured) error {
		_, _, err := e.Wait(ctx, sb, w, resource.Ready)
		return err
	})
}

// benchClusterSandbox is a loop of create → wait → release of a Sandbox on
// the local control plane, in a namespace nsPrefix-<hex> applied as a
// tenant first (tune changes the values before that), each run named
// runPrefix-<i>.
func benchClusterSandbox(b *testing.B, nsPrefix, runPrefix string, tune func(values map[string]any), wait func(context.Context, *engine.Engine, *resource.Resource, *unstructured.Unstructured) error) {
	b.Helper()
	if env == nil {
		b.Skip("no control plane")
	}
	vc := valuestest.LoadShipped(b, "standard-cidrs-sandbox")
	e := realEngineB(b)
	ctx := context.Background()
	ns := fmt.Sprintf("%s-%x", nsPrefix, time.Now().UnixNano()&0xffffff)
	vc.Values["namespace"] = ns
	if tune != nil {
		tune(vc.Values)
	}
	if _, err := e.Apply(ctx, e.Catalog.Used(resource.UseTenant), ns, vc.Values); err != nil {
		b.Fatal(err)
	}
	sb, _ := e.Catalog.Get("sandbox")
	run := vc.Values["run"].(map[string]any)
	run["deadlineTime"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	i := 0
	for b.Loop() {
		i++
		run["name"] = fmt.Sprintf("%s-%d", runPrefix, i)
		w, err := e.Create(ctx, sb, ns, vc.Values, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := wait(ctx, e, sb, w); err != nil {
			b.Fatal(err)
		}
		if _, err := e.Release(ctx, engine.RefOf(sb, w)); err != nil {
			b.Fatal(err)
		}
	}
}
