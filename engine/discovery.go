package engine

import (
	"errors"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
)

// Forget drops what the engine resolved for a resource and, when the mapper
// can be reset, its discovery cache: the next call asks the API server
// again (an API removed or installed while the worker runs).
func (e *Engine) Forget(s *resource.Resource) {
	e.mu.Lock()
	delete(e.resolved, s.Name)
	e.refreshed = time.Now()
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

// noteMissing forgets a resource's resolution when err says its resource is
// no longer served, and returns err.
func (e *Engine) noteMissing(s *resource.Resource, err error) error {
	if err != nil && ResourceMissing(err) {
		e.Log.Info("the server no longer serves a resource; discovery will be asked again", "file", s.File)
		e.Forget(s)
	}
	return err
}

// DefaultDiscoveryRefresh is how often at most a miss (an API the cached
// discovery does not know) makes the engine ask the API server again (see
// Engine.DiscoveryRefresh): an API installed while the worker runs is found
// within it, and an API that is not served (CiliumNetworkPolicy in
// standard mode) does not cost a discovery round on every call.
const DefaultDiscoveryRefresh = 30 * time.Second

// refreshDiscovery resets the mapper's discovery cache unless that was done
// less than e.DiscoveryRefresh ago; it reports whether it did.
func (e *Engine) refreshDiscovery() bool {
	rm, ok := e.Mapper.(meta.ResettableRESTMapper)
	if !ok {
		return false
	}
	e.mu.Lock()
	if !e.refreshed.IsZero() && time.Since(e.refreshed) < e.DiscoveryRefresh {
		e.mu.Unlock()
		return false
	}
	e.refreshed = time.Now()
	e.mu.Unlock()
	rm.Reset()
	return true
}
