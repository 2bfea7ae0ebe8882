package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/paperclip-k8s/paperclip-k8s/internal/bench"
)

// runBench measures the provider in process on a local control plane
// (started as demo starts it) or the cluster of --kubeconfig, and prints
// Markdown tables of figures. It asserts nothing.
func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("n", 50, "samples per latency row and per exec figure (the sustained row makes 4n acquires)")
	parallel := fs.Int("parallel", 50, "concurrent acquires of the parallel rows")
	rf := newRunFlags(fs, "measure on this cluster instead of a local control plane (it creates a namespace per company it uses)")
	noWorker := fs.Bool("no-worker", false, "skip the worker process's start time and RSS")
	warmPools := fs.Bool("warm-pools", false, "print only the warm-pool table: backends sandbox, sandboxclaim with an empty pool and with a warm pool, at parallelism 1 and 20 (acquire, first command, bare exec, API requests, pool refill)")
	poolSize := fs.Int("pool-size", 20, "with -warm-pools: warmPoolSize of the warm-pool rows")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *warmPools && *poolSize < 1 {
		return fmt.Errorf("bench: -pool-size must be at least 1 (the empty pool has its own row)")
	}
	ctx, stop := signalContext()
	defer stop()

	log := rf.logger()
	klog.SetSlogLogger(log.With("component", "client-go"))

	if rf.kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "bench: building (once) and starting the local control plane …")
	}
	tg, err := openTarget(ctx, rf.kubeconfig, nil, nil)
	if err != nil {
		return err
	}
	defer tg.stop()
	worker := ""
	if !*noWorker {
		if worker, err = os.Executable(); err != nil {
			return fmt.Errorf("finding this binary to start it as a worker: %w (or pass -no-worker)", err)
		}
	}
	return bench.Run(ctx, bench.Options{
		Kubeconfig: tg.kubeconfig, Backend: rf.backend, N: *n, Parallel: *parallel, Worker: worker, ServerPIDs: tg.pids,
		Out: os.Stdout, Progress: os.Stderr, Log: log, WarmPools: *warmPools, PoolSize: *poolSize,
	})
}
