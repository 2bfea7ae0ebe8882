package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
)

// The tests of this package drive the BUILT binary through its stdin and
// stdout, as paperclip-server does. TestMain builds it once; the hook tests
// share one local control plane (internal/devenv), started on first use and
// stopped after the tests.

var (
	// workerBin is the paperclip-k8s binary built by TestMain.
	workerBin string

	envOnce   sync.Once
	sharedEnv *devenv.Env
	envErr    error // start failure: tests needing the env fail
	envSkip   string
	envTook   time.Duration
	envCancel context.CancelFunc = func() {}
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "paperclip-k8s-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	workerBin = filepath.Join(dir, "paperclip-k8s")
	start := time.Now()
	if err := buildWorker(workerBin); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: building the worker binary:", err)
		return 1
	}
	buildTook := time.Since(start)
	code := m.Run()
	if sharedEnv != nil {
		sharedEnv.Stop()
	}
	envCancel()
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "paperclip-k8s tests: binary built in %s; control plane started in %s\n",
			buildTook.Round(time.Millisecond), envTook.Round(time.Millisecond))
	}
	return code
}

func buildWorker(out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building the worker needs the go command on PATH: %w", err)
	}
	cmd := exec.Command(goBin, "build", "-o", out, ".")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// requireEnv returns the shared control plane, starting it on first use.
// Missing control-plane binaries fail the test with CI=true and skip it
// otherwise (devcluster's rule); any other start failure fails it.
func requireEnv(t testing.TB) *devenv.Env {
	t.Helper()
	envOnce.Do(func() {
		binDir, err := devcluster.BinDir()
		if err != nil {
			if errors.Is(err, devcluster.ErrNoBinaries) && !devcluster.InCI() {
				envSkip = err.Error()
				return
			}
			envErr = err
			return
		}
		// The exec node lives as long as the ctx given to devenv.Start: it
		// must outlive the tests. Only a start that hangs is cancelled.
		ctx, cancel := context.WithCancel(context.Background())
		envCancel = cancel
		timer := time.AfterFunc(devcluster.StartTimeout, cancel)
		start := time.Now()
		sharedEnv, envErr = devenv.Start(ctx, devenv.Options{BinDir: binDir})
		envTook = time.Since(start)
		timer.Stop()
		if errors.Is(envErr, devcluster.ErrNoBinaries) && !devcluster.InCI() {
			envSkip, envErr = envErr.Error(), nil
		}
	})
	switch {
	case envErr != nil:
		t.Fatalf("starting the local control plane: %v", envErr)
	case envSkip != "":
		t.Skip(envSkip)
	}
	return sharedEnv
}
