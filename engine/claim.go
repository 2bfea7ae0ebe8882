package engine

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Claim makes sure that the objects of the resources with a claim block are
// ours before anything is applied to them: an absent object is created
// (with the rendered labels, so it is ours from its first version); an
// existing one must carry the rendered value of every claimed label, else a
// ClaimError is returned and nothing is changed. Server-side apply alone
// would take over any object of that name, another company's included.
func (e *Engine) Claim(ctx context.Context, specs []*resource.Resource, namespace string, values map[string]any) error {
	for _, s := range specs {
		if s.Claim == nil {
			continue
		}
		if wanted, err := s.Wanted(values); err != nil {
			return err
		} else if !wanted {
			continue
		}
		want, _, _, err := e.Build(s, namespace, values)
		if err != nil {
			return err
		}
		if err := e.claim(ctx, s, want); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) claim(ctx context.Context, s *resource.Resource, want *unstructured.Unstructured) error {
	c, _, err := e.client(s, want.GetNamespace())
	if err != nil {
		return err
	}
	ref := RefOf(s, want)
	for _, k := range s.Claim.Labels {
		if want.GetLabels()[k] == "" {
			return &resource.FileError{File: s.File, Pointer: "/claim/labels", Problem: fmt.Sprintf("label %q is claimed but the template renders no value for it", k)}
		}
	}
	cur, err := c.Get(ctx, want.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		got, cerr := c.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager})
		if cerr == nil {
			e.Log.Info("created", "object", RefOf(s, got).String(), "file", s.File)
			return nil
		}
		if !apierrors.IsAlreadyExists(cerr) {
			return fmt.Errorf("creating %s from %s: %w", ref, s.File, cerr)
		}
		// Someone else created it meanwhile: check theirs.
		cur, err = c.Get(ctx, want.GetName(), metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("reading %s to check that it is ours: %w", ref, err)
	}
	var wrong []string
	for _, k := range s.Claim.Labels {
		got, ok := cur.GetLabels()[k]
		switch {
		case !ok:
			wrong = append(wrong, fmt.Sprintf("label %s is missing (want %q)", k, want.GetLabels()[k]))
		case got != want.GetLabels()[k]:
			wrong = append(wrong, fmt.Sprintf("label %s is %q (want %q)", k, got, want.GetLabels()[k]))
		}
	}
	if len(wrong) > 0 {
		return &ClaimError{Ref: ref, File: s.File, Problem: strings.Join(wrong, ", ")}
	}
	if cur.GetDeletionTimestamp() != nil {
		return fmt.Errorf("%s is being deleted; try again once it is gone (the provider then creates it anew)", ref)
	}
	return nil
}
