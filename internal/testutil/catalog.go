package testutil

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// Catalog loads the shipped data files (resources/).
func Catalog(tb testing.TB) *resource.Catalog {
	tb.Helper()
	c, err := resource.Load(resources.FS, ".")
	if err != nil {
		tb.Fatalf("loading resources: %v", err)
	}
	return c
}

// TestCatalog loads the shipped data files and the testdata-only backends
// (testdata/backends).
func TestCatalog(tb testing.TB) *resource.Catalog {
	tb.Helper()
	c, err := resource.Load(resources.FS, ".", os.DirFS(filepath.Join(RepoRoot(), "testdata", "backends")))
	if err != nil {
		tb.Fatalf("loading resources and testdata/backends: %v", err)
	}
	return c
}

// RepoRoot is the repository's top directory (found from this file's
// place in it, so any package's test may call it).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
