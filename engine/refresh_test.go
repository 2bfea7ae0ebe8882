package engine_test

import (
	"errors"
	"testing"
	"testing/fstest"

	"github.com/matryer/is"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// countingMapper is a resettable mapper that counts resets.
type countingMapper struct {
	meta.RESTMapper
	resets int
}

func (m *countingMapper) Reset() { m.resets++ }

// An API that is not served costs one discovery refresh per interval, not
// one per call; an engine without a resettable mapper never refreshes.
func TestMissingAPIRefreshesDiscoveryAtMostOncePerInterval(t *testing.T) {
	is := is.New(t)
	c, err := resource.Load(resources.FS, ".", fstest.MapFS{"gadget.yaml": {Data: []byte(gadgetFile)}})
	is.NoErr(err)
	m := &countingMapper{RESTMapper: meta.NewDefaultRESTMapper([]schema.GroupVersion{{Version: "v1"}})}
	e := engine.New(c, nil, m, nil, nil)
	gadget, _ := c.Get("gadget")
	for range 5 {
		_, err := e.Resolve(gadget)
		var missing *engine.APIMissingError
		is.True(errors.As(err, &missing))
	}
	is.Equal(m.resets, 1)
	e.Forget(gadget) // a probe: always asks
	is.Equal(m.resets, 2)
	_, _ = e.Resolve(gadget)
	is.Equal(m.resets, 2) // within the interval of the probe's refresh
}
