package e2e_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
)

// prerequisites installs paperclipai, builds the control-plane binaries and
// the plugin package (into a temporary directory) concurrently: each is a
// no-op when cached.
func prerequisites(t *testing.T) (pcDir, binDir, pkgDir string) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg                    sync.WaitGroup
		pcErr, binErr, pkgErr error
	)
	pkgDir = filepath.Join(t.TempDir(), "plugin-kubernetes")
	wg.Add(3)
	go func() {
		defer wg.Done()
		timed(t, "paperclip.Install", func() { pcDir, pcErr = paperclip.Install() })
	}()
	go func() {
		defer wg.Done()
		timed(t, "devcluster.BinDir", func() { binDir, binErr = devcluster.BinDir() })
	}()
	go func() {
		defer wg.Done()
		timed(t, "hack/build-npm.sh", func() { pkgErr = buildPackage(root, pkgDir) })
	}()
	wg.Wait()
	if err := errors.Join(pcErr, binErr, pkgErr); err != nil {
		t.Fatal(err)
	}
	return pcDir, binDir, pkgDir
}

// sandboxImage writes what the "sandbox image" holds. The exec node runs
// pod commands as local processes, so remote paths are local paths: the
// workspace (workspacePath, the lease's remoteCwd, where the host uploads
// and runs) and a bin dir with the fake agent CLIs.
func sandboxImage(t *testing.T) (workspace, sandboxBin, claude string) {
	t.Helper()
	scratch := t.TempDir()
	workspace = filepath.Join(scratch, "workspace")
	sandboxBin = filepath.Join(scratch, "bin")
	claude = filepath.Join(sandboxBin, "claude")
	for _, err := range []error{
		os.MkdirAll(workspace, 0o755),
		os.MkdirAll(sandboxBin, 0o755),
		os.WriteFile(claude, []byte(fakeClaude), 0o755),
		os.WriteFile(filepath.Join(sandboxBin, "codex-acp"), []byte(fakeCodexACP), 0o755),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return workspace, sandboxBin, claude
}
