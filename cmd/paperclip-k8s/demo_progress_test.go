package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

// While the control plane builds, the demo says which go build runs (the
// build directory of hack/build-k8s-bins.sh fills one group at a time),
// for how long, and where.
func TestDemoBuildStatus(t *testing.T) {
	is := is.New(t)
	root := t.TempDir()
	is.Equal(buildStatus(root, time.Minute), "") // no build under way
	dir := filepath.Join(root, ".build.abc123")
	is.NoErr(os.Mkdir(dir, 0o755))
	touch := func(names ...string) {
		for _, n := range names {
			is.NoErr(os.WriteFile(filepath.Join(dir, n), nil, 0o755))
		}
	}
	is.Equal(buildStatus(root, 90*time.Second+400*time.Millisecond),
		"  1m30s: building kube-apiserver, kube-controller-manager, kube-scheduler (1/3) into "+dir)
	touch("kube-apiserver", "kube-controller-manager", "kube-scheduler")
	is.Equal(buildStatus(root, 5*time.Minute), "  5m0s: building etcd (2/3) into "+dir)
	touch("etcd")
	is.Equal(buildStatus(root, 6*time.Minute), "  6m0s: building kwok (3/3) into "+dir)
	touch("kwok")
	is.Equal(buildStatus(root, 7*time.Minute), "  7m0s: installing the binaries")
}

func TestDemoPlanAndBinRoot(t *testing.T) {
	is := is.New(t)
	t.Setenv("KUBE_TEST_BIN", "")
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	is.Equal(binRoot(), "/x/cache/paperclip-k8s/kube-bin")
	t.Setenv("KUBE_TEST_BIN", "/opt/bins/v1/")
	is.Equal(binRoot(), "/opt/bins")

	local := demoPlan("", "sandbox")
	is.True(strings.Contains(local, "build the control plane, once"))
	is.True(strings.Contains(local, "/opt/bins/<version>-<hash>"))
	is.True(strings.Contains(local, "run two commands in it"))
	is.True(strings.Contains(local, "and stop the control plane"))
	remote := demoPlan("/k/config", "job")
	is.True(!strings.Contains(remote, "build the control plane"))
	is.True(strings.Contains(remote, "1. validate the config and acquire a lease on the job backend"))
	is.True(strings.Contains(remote, "await the Job"))
}
