package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

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
// removed), the run's deadline and annotations, on the conditions of
// w's UID, the standby's labels as they were made, and the absence of the
// labels only the run adds (a JSON patch's tests: the API server checks
// them on the object as it writes it, so the controller's writes since w
// was read do not matter; a standby that carries a run's labels was
// taken). One taken by another first is a *StandbyTakenError, one deleted
// (or replaced) a *GoneError.
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
	c, _, err := e.client(s, w.GetNamespace())
	if err != nil {
		return nil, err
	}
	// A JSON patch whose tests are the standby's UID and labels: the API
	// server applies it to the object as it is when it writes (its
	// controller writes status and annotations meanwhile), all or nothing,
	// so of two takers only the first finds the standby labels.
	esc := func(k string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(k) }
	ops := []map[string]any{{"op": "test", "path": "/metadata/uid", "value": string(w.GetUID())}}
	for _, k := range slices.Sorted(maps.Keys(wasLabels)) {
		ops = append(ops, map[string]any{"op": "test", "path": "/metadata/labels/" + esc(k), "value": wasLabels[k]})
		if _, keep := wantLabels[k]; !keep {
			ops = append(ops, map[string]any{"op": "remove", "path": "/metadata/labels/" + esc(k)})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(wantLabels)) {
		if _, had := wasLabels[k]; !had {
			// A label only a run adds is absent from a standby (a missing
			// member tests equal to null): one that has it was taken.
			ops = append(ops, map[string]any{"op": "test", "path": "/metadata/labels/" + esc(k), "value": nil})
		}
		ops = append(ops, map[string]any{"op": "add", "path": "/metadata/labels/" + esc(k), "value": wantLabels[k]})
	}
	if len(annotations) > 0 && w.GetAnnotations() == nil {
		// Adding the whole map would replace one written since w was
		// read: test that there still is none (a missing member tests
		// equal to null).
		ops = append(ops, map[string]any{"op": "test", "path": "/metadata/annotations", "value": nil},
			map[string]any{"op": "add", "path": "/metadata/annotations", "value": map[string]any{}})
	}
	for _, k := range slices.Sorted(maps.Keys(annotations)) {
		ops = append(ops, map[string]any{"op": "add", "path": "/metadata/annotations/" + esc(k), "value": annotations[k]})
	}
	ptr := ""
	for _, k := range deadline {
		ptr += "/" + esc(k)
	}
	ops = append(ops, map[string]any{"op": "add", "path": ptr, "value": at})
	body, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	out, err := c.Patch(ctx, w.GetName(), types.JSONPatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
	if err == nil {
		return out, nil
	}
	if apierrors.IsNotFound(err) {
		return nil, &GoneError{Ref: ref}
	}
	// A failed test: say which.
	cur, gerr := e.Get(ctx, ref)
	if gerr != nil {
		return nil, gerr
	}
	if cur.GetUID() != w.GetUID() {
		return nil, &GoneError{Ref: ref, Replaced: true}
	}
	for _, k := range slices.Sorted(maps.Keys(wasLabels)) {
		if cur.GetLabels()[k] != wasLabels[k] {
			return nil, &StandbyTakenError{Ref: ref, Label: k}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(wantLabels)) {
		if _, had := wasLabels[k]; !had {
			if _, has := cur.GetLabels()[k]; has {
				return nil, &StandbyTakenError{Ref: ref, Label: k}
			}
		}
	}
	if w.GetAnnotations() == nil && cur.GetAnnotations() != nil {
		// Still the standby, annotated since w was read: once more.
		return e.Take(ctx, s, cur, standbyValues, runValues, annotations)
	}
	return nil, fmt.Errorf("taking the standby %s for a run: %w", ref, err)
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
