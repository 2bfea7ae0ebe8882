package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Cleanup after a call whose context expired needs a context of its own:
// one detached from the expired one's cancellation, yet bounded. A caller
// with a reply deadline (a bounded hook) records it on the context with
// WithCleanupDeadline; CleanupContext then ends there.

type cleanupDeadlineKey struct{}

// DefaultCleanupTimeout bounds a cleanup whose context carries no cleanup
// deadline.
const DefaultCleanupTimeout = 10 * time.Second

// MinCleanupTimeout is the least time a cleanup gets, even when the cleanup
// deadline has (nearly) passed: deleting what a call left behind is worth a
// short overrun.
const MinCleanupTimeout = 2 * time.Second

// WithCleanupDeadline records on ctx the time by which cleanup after ctx
// is cancelled or expires must end.
func WithCleanupDeadline(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, cleanupDeadlineKey{}, t)
}

// CleanupDeadline returns the cleanup deadline recorded on ctx.
func CleanupDeadline(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(cleanupDeadlineKey{}).(time.Time)
	return t, ok
}

// CleanupContext returns a context that keeps ctx's values but not its
// cancellation or deadline, and that ends at ctx's cleanup deadline (at
// least MinCleanupTimeout from now), or after DefaultCleanupTimeout when ctx
// carries none.
func CleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	now := time.Now()
	end := now.Add(DefaultCleanupTimeout)
	if t, ok := CleanupDeadline(ctx); ok {
		end = t
	}
	if end.Before(now.Add(MinCleanupTimeout)) {
		end = now.Add(MinCleanupTimeout)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), end)
}

// SetDeadline moves the deadline of a live workload whose backend keeps an
// absolute time at deadlinePath (e.g. a Sandbox's spec.shutdownTime). The
// patch carries the workload's UID, so the API server refuses it for an
// object that replaced ours.
func (e *Engine) SetDeadline(ctx context.Context, ref Ref, t time.Time) error {
	b := ref.Resource.Backend
	if b == nil || b.Deadline != "time" || b.DeadlinePath == "" {
		return fmt.Errorf("%s: the backend declares no deadlinePath for an absolute deadline", ref.Resource.File)
	}
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return err
	}
	parts, err := resource.SplitPath(b.DeadlinePath)
	if err != nil {
		return &resource.FileError{File: ref.Resource.File, Pointer: "/backend/deadlinePath", Problem: err.Error()}
	}
	patch := map[string]any{}
	cur := patch
	for _, p := range parts[:len(parts)-1] {
		next := map[string]any{}
		cur[p] = next
		cur = next
	}
	cur[parts[len(parts)-1]] = t.UTC().Format(time.RFC3339)
	if ref.UID != "" {
		patch["metadata"] = map[string]any{"uid": string(ref.UID)}
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if _, err := c.Patch(ctx, ref.Name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsNotFound(err) {
			return &GoneError{Ref: ref}
		}
		return fmt.Errorf("moving the deadline (%s) of %s: %w", b.DeadlinePath, ref, err)
	}
	return nil
}
