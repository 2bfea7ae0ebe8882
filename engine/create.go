package engine

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Create renders and creates one object (a claim: it fails if the name is
// taken). When the resource has an owner block and owner is given, the object
// gets an ownerReference to it. A create without a definite answer
// (OutcomeUnknown) is followed by a delete of that name, when the object
// there carries what was rendered, and fails with an *UnknownOutcomeError.
func (e *Engine) Create(ctx context.Context, s *resource.Resource, namespace string, values map[string]any, owner *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	if wanted, err := s.Wanted(values); err != nil {
		return nil, err
	} else if !wanted {
		return nil, nil // not wanted: its API need not even be served
	}
	o, wanted, _, err := e.Build(s, namespace, values)
	if err != nil {
		return nil, err
	}
	if !wanted {
		return nil, nil
	}
	if s.Owner != nil {
		if owner == nil || owner.GetUID() == "" {
			return nil, fmt.Errorf("%s: %s must be owned by the workload, but no workload with a UID was given", s.File, RefOf(s, o))
		}
		t := true
		ctrl := s.Owner.Controller
		o.SetOwnerReferences([]metav1.OwnerReference{{
			APIVersion: owner.GetAPIVersion(), Kind: owner.GetKind(), Name: owner.GetName(), UID: owner.GetUID(),
			Controller: &ctrl, BlockOwnerDeletion: boolPtr(ctrl && t),
		}})
	}
	c, _, err := e.client(s, o.GetNamespace())
	if err != nil {
		return nil, err
	}
	got, err := c.Create(ctx, o, metav1.CreateOptions{FieldManager: FieldManager})
	if OutcomeUnknown(err) {
		// The object may exist (applied, then the answer was lost): delete
		// that name if it is ours, so a lost response leaks nothing.
		return nil, e.cleanupUnknownCreate(ctx, s, c, o, err)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s from %s: %w", RefOf(s, o), s.File, e.noteMissing(s, err))
	}
	if got.GetUID() == "" {
		return nil, fmt.Errorf("creating %s: the server returned no UID", RefOf(s, o))
	}
	return got, nil
}

func boolPtr(b bool) *bool { return &b }

// cleanupUnknownCreate deletes the object a create with an unknown outcome
// may have made, with a context of its own: it reads the deterministic
// name, checks that the object carries every label the create rendered and,
// when the create set one, its owner's UID, then deletes it with a UID
// precondition.
func (e *Engine) cleanupUnknownCreate(ctx context.Context, s *resource.Resource, c dynamic.ResourceInterface, want *unstructured.Unstructured, cause error) error {
	ref := RefOf(s, want)
	out := &UnknownOutcomeError{Ref: ref, File: s.File, Cause: cause}
	cctx, cancel := CleanupContext(ctx)
	defer cancel()
	cur, err := c.Get(cctx, want.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		out.Absent = true
		return out
	case err != nil:
		out.CleanupErr = fmt.Errorf("reading it back: %v", err)
		return out
	}
	if why := notCreatedBy(want, cur); why != "" {
		out.LeftAlone = why
		return out
	}
	out.Ref.UID = cur.GetUID()
	if _, err := e.Release(cctx, out.Ref); err != nil {
		out.CleanupErr = err
		return out
	}
	out.Deleted = true
	e.Log.Warn("deleted an object whose create had an unknown outcome", "object", out.Ref.String(), "uid", string(out.Ref.UID))
	return out
}

// notCreatedBy says why cur is not the object a create of want would have
// made ("" when it is): every label of want must be on cur with the same
// value, and each owner UID of want must be among cur's. A want with
// neither labels nor owners cannot be told apart from another object.
func notCreatedBy(want, cur *unstructured.Unstructured) string {
	labels, owners := want.GetLabels(), want.GetOwnerReferences()
	if len(labels) == 0 && len(owners) == 0 {
		return "the create rendered neither labels nor an owner to recognise it by"
	}
	have := cur.GetLabels()
	for k, v := range labels {
		if got, ok := have[k]; !ok || got != v {
			return fmt.Sprintf("its label %s is %q, not %q", k, got, v)
		}
	}
	for _, o := range owners {
		found := false
		for _, h := range cur.GetOwnerReferences() {
			found = found || h.UID == o.UID
		}
		if !found {
			return fmt.Sprintf("it is not owned by UID %s", o.UID)
		}
	}
	return ""
}
