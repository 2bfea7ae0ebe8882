package main

import (
	"context"
	"strings"
	"testing"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// defaultResources over the tenant LimitRange's maximum is refused at
// validation (the API server would refuse every pod); raising tenantLimits
// raises the LimitRange itself, and the API server admits the pod.
func TestTenantLimitsBoundDefaultResources(t *testing.T) {
	is := is.New(t)
	big := map[string]any{"limits": map[string]any{"memory": "12Gi"}}
	h := newHooks(t, "sandbox", map[string]any{"defaultResources": big})
	e := h.w.callErr("environmentAcquireLease", h.acquireParams(nil))
	is.True(strings.Contains(e.Message, `/defaultResources/limits/memory: "12Gi" is more than the tenant LimitRange's maximum "8Gi"`))

	h.config["tenantLimits"] = map[string]any{"maxMemory": "16Gi"}
	l := h.acquire(nil)
	lr, err := h.kube().CoreV1().LimitRanges(h.namespace()).Get(context.Background(), "paperclip-limits", metav1.GetOptions{})
	is.NoErr(err)
	max := lr.Spec.Limits[0].Max
	is.Equal(max.Memory().String(), "16Gi")
	is.Equal(max.Cpu().String(), "4") // the default
	pod := h.waitPod(l, "")
	is.Equal(pod.Spec.Containers[0].Resources.Limits.Memory().String(), "12Gi") // admitted by the API server
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), nil)
}
