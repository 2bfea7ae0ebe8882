package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
)

// runFlags are the flags bench and demo share: the cluster, the backend and
// the provider's log.
type runFlags struct {
	kubeconfig string
	backend    string
	verbose    bool
}

// newRunFlags defines --kubeconfig (kubeconfigUsage says what it changes),
// --backend and -v on fs.
func newRunFlags(fs *flag.FlagSet, kubeconfigUsage string) *runFlags {
	f := &runFlags{}
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", kubeconfigUsage)
	fs.StringVar(&f.backend, "backend", "sandbox", "backend: sandbox or job (or any backend file)")
	fs.BoolVar(&f.verbose, "v", false, "show the provider's log")
	return f
}

// logger is the provider's log: text on stderr with -v, else discarded.
func (f *runFlags) logger() *slog.Logger {
	var out io.Writer = io.Discard
	if f.verbose {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, nil))
}

// signalContext is cancelled by SIGINT or SIGTERM (or stop).
func signalContext() (ctx context.Context, stop context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// target is the cluster bench and demo run against.
type target struct {
	kubeconfig []byte
	pids       []int  // the local control plane's processes; nil for --kubeconfig
	stop       func() // stops the local control plane; a no-op for --kubeconfig
}

// openTarget reads the kubeconfig file path or, when path is "", builds
// (once) and starts the local control plane of internal/devenv: each stage,
// and the stop, runs through step (demo times and prints them; nil runs them
// as they are). progress, when not nil, gets a line every 30 s of a cold
// build (watchBuild).
func openTarget(ctx context.Context, path string, step func(name string, f func() error) error, progress io.Writer) (*target, error) {
	if step == nil {
		step = func(_ string, f func() error) error { return f() }
	}
	if path != "" {
		kc, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		return &target{kubeconfig: kc, stop: func() {}}, nil
	}
	if err := step("build the control plane (cold: ~7.5 min once)", func() error {
		if progress != nil {
			// A cold build prints a line on stderr; from then on a line
			// every 30 s says how long it has run and what it builds.
			stop := make(chan struct{})
			defer close(stop)
			go watchBuild(progress, binRoot(), time.Now(), 30*time.Second, stop)
		}
		_, err := devcluster.BinDir()
		return err
	}); err != nil {
		return nil, err
	}
	var env *devenv.Env
	if err := step("start etcd, apiserver, controllers, kwok", func() error {
		var err error
		env, err = devenv.Start(ctx, devenv.Options{})
		return err
	}); err != nil {
		return nil, err
	}
	return &target{
		kubeconfig: env.KubeconfigBytes(),
		pids:       env.PIDs(),
		stop:       func() { _ = step("stop the control plane", func() error { env.Stop(); return nil }) },
	}, nil
}
