package main

import (
	"context"
	"strings"
	"testing"

	"github.com/matryer/is"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// imageAllowList bounds the image a run uses: a config whose list leaves
// out the adapter's image (after imageRegistry) is refused by
// environmentValidateConfig and by environmentAcquireLease, naming the
// adapter and the image, and nothing is created.
func TestImageAllowListRefusesTheRunImage(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", map[string]any{
		"imageAllowList": []any{"ghcr.io/acme/*"},
		"adapters":       []any{map[string]any{"adapterType": "claude_local", "runtimeImage": "registry.example.com/agents/claude:1.2.0"}},
		"adapterType":    "claude_local",
	})
	var v struct {
		OK     bool     `json:"ok"`
		Errors []string `json:"errors"`
	}
	h.w.mustCall("environmentValidateConfig", map[string]any{"driverKey": "kubernetes", "config": h.config}, &v)
	is.True(!v.OK)
	is.Equal(len(v.Errors), 1)
	is.True(strings.Contains(v.Errors[0], `imageAllowList`))
	is.True(strings.Contains(v.Errors[0], `adapter "claude_local" runs "registry.example.com/agents/claude:1.2.0"`))

	e := h.w.callErr("environmentAcquireLease", h.acquireParams(nil))
	is.Equal(e.Code, -32602)
	is.True(strings.Contains(e.Message, `adapter "claude_local" runs "registry.example.com/agents/claude:1.2.0"`))
	_, err := h.kube().CoreV1().Namespaces().Get(context.Background(), h.namespace(), metav1.GetOptions{})
	is.True(apierrors.IsNotFound(err)) // refused before anything was created

	// Allowed: the run gets that image.
	h.config["imageAllowList"] = []any{"registry.example.com/agents/*"}
	l := h.acquire(nil)
	pod := h.waitPod(l, "")
	is.Equal(pod.Spec.Containers[0].Image, "registry.example.com/agents/claude:1.2.0")
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l), nil)
}
