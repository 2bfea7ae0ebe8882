package resource

import (
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Deadline reads a workload's absolute deadline at its backend's
// deadlinePath; ok is false when the backend has none or it is unset.
func (s *Resource) Deadline(o *unstructured.Unstructured) (t time.Time, ok bool) {
	if s.Backend == nil || s.Backend.DeadlinePath == "" {
		return time.Time{}, false
	}
	keys, err := SplitPath(s.Backend.DeadlinePath)
	if err != nil {
		return time.Time{}, false
	}
	v, found, err := unstructured.NestedString(o.Object, keys...)
	if !found || err != nil {
		return time.Time{}, false
	}
	t, err = time.Parse(time.RFC3339, v)
	return t, err == nil
}
