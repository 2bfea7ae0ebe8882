package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Take hands a standby workload to a run. A standby is a workload of a
// backend that declares backend.standby, made (Create) with values of no
// run yet (standbyValues) so that it is ready when a run comes; w is that
// workload as last read. Take renders the file's template with both values
// and refuses, with a *StandbyMismatchError, when the renderings differ
// anywhere but metadata.labels and the deadline (backend.deadlinePath):
// the standby is not the workload the run asks for. Otherwise one merge
// patch gives w the run's labels (a standby label the run's lack is
// removed), the run's deadline and annotations, on the preconditions of
// w's UID and resourceVersion. When the server refuses it for a newer
// version (its controller wrote since), Take reads it again and retries
// while it still carries the standby's labels; one taken by another first
// is a *StandbyTakenError, one deleted a *GoneError.
func (e *Engine) Take(ctx context.Context, s *resource.Resource, w *unstructured.Unstructured, standbyValues, runValues map[string]any, annotations map[string]string) (*unstructured.Unstructured, error) {
	ref := RefOf(s, w)
	b := s.Backend
	if b == nil || !b.Standby {
		return nil, &resource.FileError{File: s.File, Pointer: "/backend/standby", Problem: "is not set: the backend's workloads are made for their run and cannot be taken"}
	}
	deadline, err := resource.SplitPath(b.DeadlinePath)
	if err != nil {
		return nil, &resource.FileError{File: s.File, Pointer: "/backend/deadlinePath", Problem: err.Error()}
	}
	was, _, err := s.Render(standbyValues)
	if err != nil {
		return nil, err
	}
	want, _, err := s.Render(runValues)
	if err != nil {
		return nil, err
	}
	wantLabels, _, _ := unstructured.NestedStringMap(want, "metadata", "labels")
	wasLabels, _, _ := unstructured.NestedStringMap(was, "metadata", "labels")
	at, found, _ := unstructured.NestedFieldCopy(want, deadline...)
	if !found {
		return nil, &resource.FileError{File: s.File, Pointer: "/backend/deadlinePath", Problem: fmt.Sprintf("%s is not in the rendered template", b.DeadlinePath)}
	}
	for _, o := range []map[string]any{was, want} {
		unstructured.RemoveNestedField(o, "metadata", "labels")
		unstructured.RemoveNestedField(o, deadline...)
	}
	if !reflect.DeepEqual(was, want) {
		return nil, &StandbyMismatchError{Ref: ref, Was: was, Want: want}
	}
	labels := map[string]any{}
	for k := range wasLabels {
		labels[k] = nil
	}
	for k, v := range wantLabels {
		labels[k] = v
	}
	c, _, err := e.client(s, w.GetNamespace())
	if err != nil {
		return nil, err
	}
	// Its controller writes the standby too (status, annotations): a
	// conflict reads it again and takes it when it still is the standby
	// (same UID, the standby's labels), else another took it first.
	for attempt := 0; ; attempt++ {
		md := map[string]any{"labels": labels, "uid": string(w.GetUID()), "resourceVersion": w.GetResourceVersion()}
		if len(annotations) > 0 {
			md["annotations"] = annotations
		}
		patch := map[string]any{"metadata": md}
		if err := unstructured.SetNestedField(patch, at, deadline...); err != nil {
			return nil, err
		}
		body, err := json.Marshal(patch)
		if err != nil {
			return nil, err
		}
		out, err := c.Patch(ctx, w.GetName(), types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
		switch {
		case err == nil:
			return out, nil
		case apierrors.IsNotFound(err):
			return nil, &GoneError{Ref: ref}
		case !apierrors.IsConflict(err) || attempt == 3:
			return nil, fmt.Errorf("taking the standby %s for a run: %w", ref, err)
		}
		cur, err := e.Get(ctx, ref)
		if err != nil {
			return nil, err
		}
		for k, v := range wasLabels {
			if cur.GetLabels()[k] != v {
				return nil, &StandbyTakenError{Ref: ref, Label: k}
			}
		}
		w = cur
	}
}

// StandbyTakenError says that a standby was taken (or relabelled) by
// another since it was read: it no longer carries the standby's labels.
type StandbyTakenError struct {
	Ref   Ref
	Label string
}

func (e *StandbyTakenError) Error() string {
	return fmt.Sprintf("the standby %s was taken by another since it was read (its label %s changed); it was not taken", e.Ref, e.Label)
}

// StandbyMismatchError says that a standby workload, as made, is not what
// a run's values render: the config or the run differs from what the
// standby was made for in more than its labels and its deadline.
type StandbyMismatchError struct {
	Ref       Ref
	Was, Want map[string]any
}

func (e *StandbyMismatchError) Error() string {
	return fmt.Sprintf("the standby %s was made for other values than this run's (they differ beyond its labels and deadline); it was not taken", e.Ref)
}
