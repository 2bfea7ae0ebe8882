package engine

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Get reads one object. A missing object, or one whose UID differs from
// the ref's, is a *GoneError (Replaced for the latter).
func (e *Engine) Get(ctx context.Context, ref Ref) (*unstructured.Unstructured, error) {
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return nil, err
	}
	o, err := c.Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		if ResourceMissing(e.noteMissing(ref.Resource, err)) {
			return nil, fmt.Errorf("reading %s: the cluster no longer serves %s: %w", ref, ref.Resource.API.Kind, err)
		}
		if apierrors.IsNotFound(err) {
			return nil, &GoneError{Ref: ref}
		}
		return nil, fmt.Errorf("reading %s: %w", ref, err)
	}
	if ref.UID != "" && o.GetUID() != ref.UID {
		return nil, &GoneError{Ref: ref, Replaced: true}
	}
	return o, nil
}

// List returns the objects of a resource matching a label selector.
func (e *Engine) List(ctx context.Context, s *resource.Resource, namespace, selector string) ([]unstructured.Unstructured, error) {
	c, _, err := e.client(s, namespace)
	if err != nil {
		return nil, err
	}
	l, err := c.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.noteMissing(s, err)
		return nil, fmt.Errorf("listing %s in %q (selector %q): %w", s.API.Kind, namespace, selector, err)
	}
	return l.Items, nil
}

// Release deletes an object with the resource's propagation policy and, when
// the ref has a UID, a UID precondition: an object that replaced ours is
// left alone. It reports whether this call deleted something; an object
// already gone is success.
func (e *Engine) Release(ctx context.Context, ref Ref) (bool, error) {
	c, _, err := e.client(ref.Resource, ref.Namespace)
	if err != nil {
		return false, err
	}
	opts := metav1.DeleteOptions{}
	if ref.Resource.Release != nil && ref.Resource.Release.PropagationPolicy != "" {
		p := metav1.DeletionPropagation(ref.Resource.Release.PropagationPolicy)
		opts.PropagationPolicy = &p
	}
	if ref.UID != "" {
		uid := ref.UID
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err = c.Delete(ctx, ref.Name, opts)
	switch {
	case ResourceMissing(e.noteMissing(ref.Resource, err)):
		return false, fmt.Errorf("deleting %s: the cluster no longer serves %s: %w", ref, ref.Resource.API.Kind, err)
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	case apierrors.IsConflict(err) && ref.UID != "":
		// The precondition failed: the name now belongs to another object.
		return false, nil
	}
	return false, fmt.Errorf("deleting %s: %w", ref, err)
}

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
