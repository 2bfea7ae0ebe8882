package engine

import (
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
)

// Forget drops what the engine resolved for a spec and, when the mapper
// can be reset, its discovery cache: the next call asks the API server
// again (an API removed or installed while the worker runs).
func (e *Engine) Forget(s *Spec) {
	e.mu.Lock()
	delete(e.resolved, s.Name)
	e.mu.Unlock()
	if rm, ok := e.Mapper.(meta.ResettableRESTMapper); ok {
		rm.Reset()
	}
}

// ResourceMissing reports whether err says that the server no longer
// serves a resource (a 404 about the resource, not about one object: the
// status names no object), or that the mapper does not know its kind.
func ResourceMissing(err error) bool {
	if meta.IsNoMatchError(err) {
		return true
	}
	var st apierrors.APIStatus
	if !apierrors.IsNotFound(err) || !errors.As(err, &st) {
		return false
	}
	d := st.Status().Details
	return d == nil || d.Name == ""
}

// noteMissing forgets a spec's resolution when err says its resource is
// no longer served, and returns err.
func (e *Engine) noteMissing(s *Spec, err error) error {
	if err != nil && ResourceMissing(err) {
		e.Log.Info("the server no longer serves a resource; discovery will be asked again", "file", s.File)
		e.Forget(s)
	}
	return err
}
