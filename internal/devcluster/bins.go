package devcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Binaries lists the executables a bin dir must hold.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

// ErrNoBinaries wraps every error BinDir returns when the control-plane
// binaries are not available.
var ErrNoBinaries = errors.New("devcluster: control-plane binaries not available")

var (
	binDirOnce sync.Once
	binDirPath string
	binDirErr  error
)

// BinDir returns a directory holding all of Binaries.
//
// It returns $KUBE_TEST_BIN when that directory is complete. Otherwise it runs
// hack/build-k8s-bins.sh (found by walking up from the working directory to
// the module's go.mod) and returns the directory printed on its last stdout
// line. The script is a no-op (~10 ms) when its cache directory is complete,
// ~12 s with a warm Go build cache and ~7.5 min cold. Concurrent callers in
// other test binaries are serialised with a file lock. The result is cached
// for the life of the process.
func BinDir() (string, error) {
	binDirOnce.Do(func() { binDirPath, binDirErr = findBinDir() })
	return binDirPath, binDirErr
}

func findBinDir() (string, error) {
	if d := os.Getenv("KUBE_TEST_BIN"); d != "" {
		if err := checkBinDir(d); err == nil {
			return d, nil
		}
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoBinaries, err)
	}
	script := filepath.Join(root, "hack", "build-k8s-bins.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoBinaries, err)
	}
	unlock := lockBuild()
	defer unlock()

	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Dir = root
	cmd.Stdout = &stdout
	// The script only writes to stderr when it actually builds; pass that on
	// so a developer sees why the first test run takes minutes.
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: bash %s: %v\n%s", ErrNoBinaries, script, err, tail(stderr.Bytes(), 4096))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if err := checkBinDir(dir); err != nil {
		return "", fmt.Errorf("%w: %s printed %q: %v", ErrNoBinaries, script, dir, err)
	}
	return dir, nil
}

func checkBinDir(dir string) error {
	if dir == "" {
		return errors.New("empty bin dir")
	}
	for _, b := range Binaries {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(dir, b))
		}
	}
	return nil
}

// repoRoot walks up from the working directory to the directory holding
// go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// lockBuild takes an exclusive flock shared by every test binary of this
// project on the machine, so that two packages do not build at once.
func lockBuild() func() {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "paperclip-k8s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}
	}
	f, err := os.OpenFile(filepath.Join(dir, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
