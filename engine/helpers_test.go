package engine_test

import (
	"testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// catalog loads the shipped data files.
func catalog(t testing.TB) *resource.Catalog {
	t.Helper()
	c, err := resource.Load(resources.FS, ".")
	if err != nil {
		t.Fatalf("loading resources: %v", err)
	}
	return c
}

// loadValues builds the values of testdata/values/<name>.yaml with the
// provider's own builder (see valuestest).
func loadValues(t testing.TB, name string) valuestest.Case {
	t.Helper()
	return valuestest.Load(t, catalog(t), name)
}
