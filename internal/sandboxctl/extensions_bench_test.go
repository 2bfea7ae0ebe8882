package sandboxctl_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/sandboxctl"
)

// BenchmarkClaimReady reports the stand-in controller's figures on the
// local control plane, next to the real controller's as observed there
// (agent-sandbox-extensions-real.md §11.9: warm claim Ready ≈ 25 ms, cold
// ≈ 45 ms, refill member Ready ≈ 70 ms): from a claim's create to the
// watch event that shows it Ready=True, and (warm) from that event to the
// pool's readyReplicas back at 1. It asserts nothing.
//
//	go test -run '^$' -bench ClaimReady -benchtime 20x ./internal/sandboxctl/
func BenchmarkClaimReady(b *testing.B) {
	for _, warm := range []bool{true, false} {
		name := "cold"
		if warm {
			name = "warm"
		}
		b.Run(name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			ns := devcluster.NewNamespace(b, cluster, nil)
			replicas := int64(0)
			if warm {
				replicas = 1
			}
			create(b, ctx, sandboxctl.TemplateGVR, ns, templateObj("tpl", nil, nil))
			create(b, ctx, sandboxctl.WarmPoolGVR, ns, poolObj("pool", "tpl", replicas))
			waitFor(b, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "ready", func(u *unstructured.Unstructured) bool {
				s, _, _ := unstructured.NestedString(u.Object, "status", "selector")
				return s != "" && (replicas == 0 || readyPool(replicas)(u))
			})
			var ready, refill []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tr := traceClaims(b, ctx, ns)
				name := fmt.Sprintf("c-%d", i)
				start := time.Now()
				create(b, ctx, sandboxctl.ClaimGVR, ns, claimObj(name, "pool", nil))
				tr.until(b, ctx, name, "Ready", claimReady("True", "DependenciesReady"))
				at := time.Now()
				ready = append(ready, at.Sub(start))
				tr.w.Stop()
				if warm {
					waitFor(b, ctx, sandboxctl.WarmPoolGVR, ns, "pool", "refilled", readyPool(1))
					refill = append(refill, time.Since(at))
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(percentile(ready, 50))/1e6, "ready-p50-ms")
			b.ReportMetric(float64(percentile(ready, 95))/1e6, "ready-p95-ms")
			if warm {
				b.ReportMetric(float64(percentile(refill, 50))/1e6, "refill-p50-ms")
			}
		})
	}
}

func percentile(ds []time.Duration, q int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*q+99)/100-1)]
}
