package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/paperclip-k8s/paperclip-k8s/internal/bench"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
)

// runBench measures the provider in process on a local control plane
// (started as demo starts it) or the cluster of --kubeconfig, and prints
// Markdown tables of figures. It asserts nothing.
func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("n", 50, "samples per latency row and per exec figure (the sustained row makes 4n acquires)")
	parallel := fs.Int("parallel", 50, "concurrent acquires of the parallel rows")
	backend := fs.String("backend", "sandbox", "backend: sandbox or job (or any backend file)")
	kubeconfig := fs.String("kubeconfig", "", "measure on this cluster instead of a local control plane (it creates a namespace per company it uses)")
	noWorker := fs.Bool("no-worker", false, "skip the worker process's start time and RSS")
	verbose := fs.Bool("v", false, "show the provider's log")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logOut := io.Discard
	if *verbose {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))
	klog.SetSlogLogger(log.With("component", "client-go"))

	var kc []byte
	var pids []int
	var err error
	if *kubeconfig != "" {
		if kc, err = os.ReadFile(*kubeconfig); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, "bench: building (once) and starting the local control plane …")
		if _, err := devcluster.BinDir(); err != nil {
			return err
		}
		env, err := devenv.Start(ctx, devenv.Options{})
		if err != nil {
			return err
		}
		defer env.Stop()
		kc = env.KubeconfigBytes()
		pids = env.PIDs()
	}
	worker := ""
	if !*noWorker {
		if worker, err = os.Executable(); err != nil {
			return fmt.Errorf("finding this binary to start it as a worker: %w (or pass -no-worker)", err)
		}
	}
	return bench.Run(ctx, bench.Options{
		Kubeconfig: kc, Backend: *backend, N: *n, Parallel: *parallel, Worker: worker, ServerPIDs: pids,
		Out: os.Stdout, Progress: os.Stderr, Log: log,
	})
}
