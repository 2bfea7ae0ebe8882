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
	_, err := e.claimAll(ctx, specs, namespace, values)
	return err
}

// ClaimApply claims (see Claim), then applies specs (see Apply), except the
// objects the claim has just created: a create writes the very object the
// apply would send, so applying it again in the same call changes nothing
// and costs a request. The next apply of the same specs (a later call)
// applies them too. Their Applied entries carry the created objects. When
// the claim has just created the namespace itself (the object of the file
// whose claim says tenantNamespace), nothing in it can be this field
// manager's yet, so the namespaced specs whose conditions do not hold are
// not pruned (a read each). Another created object, even one named like
// the namespace, says nothing about what the namespace holds.
func (e *Engine) ClaimApply(ctx context.Context, specs []*resource.Resource, namespace string, values map[string]any) ([]Applied, error) {
	created, err := e.claimAll(ctx, specs, namespace, values)
	if err != nil {
		return nil, err
	}
	if len(created) == 0 {
		return e.Apply(ctx, specs, namespace, values)
	}
	fresh := false
	for s, o := range created {
		if s.Claim.TenantNamespace && o.GetName() == namespace {
			fresh = true
		}
	}
	rest := make([]*resource.Resource, 0, len(specs))
	var out []Applied
	for _, s := range specs {
		if o, ok := created[s]; ok {
			out = append(out, Applied{Resource: s, Object: o})
			continue
		}
		if fresh && s.API != nil && !s.API.ClusterScoped {
			wanted, err := s.Wanted(values)
			if err != nil {
				return out, err
			}
			if !wanted {
				continue
			}
		}
		rest = append(rest, s)
	}
	applied, err := e.Apply(ctx, rest, namespace, values)
	return append(out, applied...), err
}

// claimAll claims the objects of specs with a claim block and returns those
// it created.
func (e *Engine) claimAll(ctx context.Context, specs []*resource.Resource, namespace string, values map[string]any) (map[*resource.Resource]*unstructured.Unstructured, error) {
	var created map[*resource.Resource]*unstructured.Unstructured
	for _, s := range specs {
		if s.Claim == nil {
			continue
		}
		if wanted, err := s.Wanted(values); err != nil {
			return nil, err
		} else if !wanted {
			continue
		}
		want, _, _, err := e.Build(s, namespace, values)
		if err != nil {
			return nil, err
		}
		got, err := e.claim(ctx, s, want)
		if err != nil {
			return nil, err
		}
		if got != nil {
			if created == nil {
				created = map[*resource.Resource]*unstructured.Unstructured{}
			}
			created[s] = got
		}
	}
	return created, nil
}

// claim makes want's object ours: it returns the object when it created it,
// nil when it found it ours. An object this engine has not claimed before
// is most likely absent (a new tenant), so it is created first and read
// only when it exists (one request for a new object, two for an existing
// one); one it has claimed before is read first (one request for a
// recheck, two if it has gone meanwhile).
func (e *Engine) claim(ctx context.Context, s *resource.Resource, want *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	c, _, err := e.client(s, want.GetNamespace())
	if err != nil {
		return nil, err
	}
	ref := RefOf(s, want)
	for _, k := range s.Claim.Labels {
		if want.GetLabels()[k] == "" {
			return nil, &resource.FileError{File: s.File, Pointer: "/claim/labels", Problem: fmt.Sprintf("label %q is claimed but the template renders no value for it", k)}
		}
	}
	key := ref.String()
	create := func() (*unstructured.Unstructured, error) {
		got, err := c.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager})
		if err == nil {
			e.Log.Info("created", "object", RefOf(s, got).String(), "file", s.File)
			e.claimed.Store(key, true)
		}
		return got, err
	}
	var cur *unstructured.Unstructured
	if _, known := e.claimed.Load(key); known {
		cur, err = c.Get(ctx, want.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			got, cerr := create()
			if cerr == nil {
				return got, nil
			}
			if !apierrors.IsAlreadyExists(cerr) {
				return nil, fmt.Errorf("creating %s from %s: %w", ref, s.File, cerr)
			}
			// Someone else created it meanwhile: check theirs.
			cur, err = c.Get(ctx, want.GetName(), metav1.GetOptions{})
		}
	} else {
		got, cerr := create()
		if cerr == nil {
			return got, nil
		}
		// It exists (or creating is not allowed, when an operator made
		// the object and granted no create): check the one there.
		if !apierrors.IsAlreadyExists(cerr) && !apierrors.IsForbidden(cerr) {
			return nil, fmt.Errorf("creating %s from %s: %w", ref, s.File, cerr)
		}
		cur, err = c.Get(ctx, want.GetName(), metav1.GetOptions{})
		if err != nil && apierrors.IsForbidden(cerr) {
			return nil, fmt.Errorf("creating %s from %s: %w", ref, s.File, cerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s to check that it is ours: %w", ref, err)
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
		e.claimed.Delete(key)
		return nil, &ClaimError{Ref: ref, File: s.File, Problem: strings.Join(wrong, ", ")}
	}
	if cur.GetDeletionTimestamp() != nil {
		return nil, fmt.Errorf("%s is being deleted; try again once it is gone (the provider then creates it anew)", ref)
	}
	e.claimed.Store(key, true)
	return nil, nil
}
