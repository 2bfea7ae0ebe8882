package engine

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ReleaseOwned deletes an object only when an ownerReference of it names
// the owner's UID (a run object of that workload), with a UID
// precondition. An object that is gone, or that another owner's object
// replaced, is left alone; it reports whether this call deleted something.
func (e *Engine) ReleaseOwned(ctx context.Context, ref Ref, owner types.UID) (bool, error) {
	if owner == "" {
		return false, fmt.Errorf("deleting %s: no owner UID to check it against", ref)
	}
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return false, err
	}
	o, err := c.Get(ctx, ref.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if apierrors.IsForbidden(err) {
		// What cannot be checked is not deleted: the garbage collector
		// removes it with its owner.
		e.Log.Warn("not deleting an object whose owner cannot be checked (no get permission)", "object", ref.String())
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s to check its owner: %w", ref, err)
	}
	owned := false
	for _, r := range o.GetOwnerReferences() {
		if r.UID == owner {
			owned = true
		}
	}
	if !owned {
		e.Log.Warn("not deleting an object the workload does not own", "object", ref.String(), "owner", string(owner))
		return false, nil
	}
	ref.UID = o.GetUID()
	return e.Release(ctx, ref)
}

// Annotate sets one annotation on an object with a merge patch that
// carries the ref's UID, so the API server refuses it for an object that
// replaced ours.
func (e *Engine) Annotate(ctx context.Context, ref Ref, key, value string) error {
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return err
	}
	md := map[string]any{"annotations": map[string]string{key: value}}
	if ref.UID != "" {
		md["uid"] = string(ref.UID)
	}
	body, err := json.Marshal(map[string]any{"metadata": md})
	if err != nil {
		return err
	}
	if _, err := c.Patch(ctx, ref.Name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsNotFound(err) {
			return &GoneError{Ref: ref}
		}
		return fmt.Errorf("annotating %s with %s: %w", ref, key, err)
	}
	return nil
}
