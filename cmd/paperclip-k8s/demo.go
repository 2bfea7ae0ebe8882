package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// demo runs one lease end to end: validate, acquire, wait for the pod and
// exec, release. Without --kubeconfig it builds (once) and starts the local
// control plane and stops it afterwards.
func demo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "run against this cluster instead of a local control plane")
	backend := fs.String("backend", "sandbox", "backend: sandbox or job (or any backend file)")
	company := fs.String("company", "demo-company", "company id (the tenant namespace is derived from it)")
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
	p, err := plugin.New(slog.New(slog.NewTextHandler(logOut, nil)))
	if err != nil {
		return err
	}
	step := func(name string, f func() error) error {
		start := time.Now()
		fmt.Printf("%-44s", name+" …")
		err := f()
		if err != nil {
			fmt.Printf(" failed after %s\n", time.Since(start).Round(time.Millisecond))
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf(" ok  %8s\n", time.Since(start).Round(time.Millisecond))
		return nil
	}

	var kc []byte
	if *kubeconfig != "" {
		kc, err = os.ReadFile(*kubeconfig)
		if err != nil {
			return err
		}
	} else {
		var env *devenv.Env
		if err := step("build the control plane (cold: ~7.5 min once)", func() error {
			_, err := devcluster.BinDir()
			return err
		}); err != nil {
			return err
		}
		if err := step("start etcd, apiserver, controllers, kwok", func() error {
			env, err = devenv.Start(ctx, devenv.Options{})
			return err
		}); err != nil {
			return err
		}
		defer func() {
			_ = step("stop the control plane", func() error { env.Stop(); return nil })
		}()
		kc = env.KubeconfigBytes()
	}

	cfg := map[string]any{"kubeconfig": string(kc), "backend": *backend}
	base := plugin.BaseParams{DriverKey: "kubernetes", CompanyID: *company, EnvironmentID: "demo", Config: cfg}
	if err := step("validate the config", func() error {
		r, err := p.ValidateConfig(ctx, plugin.ValidateParams{DriverKey: "kubernetes", Config: cfg})
		if err == nil && !r.OK {
			err = errors.New(strings.Join(r.Errors, "; "))
		}
		return err
	}); err != nil {
		return err
	}
	var lease plugin.Lease
	if err := step("acquire a lease ("+*backend+")", func() error {
		lease, err = p.AcquireLease(ctx, plugin.AcquireParams{BaseParams: base, RunID: fmt.Sprintf("demo-%d", time.Now().Unix()), AdapterType: "codex_local"})
		return err
	}); err != nil {
		return err
	}
	fmt.Printf("  workload %s in namespace %s, expires %s\n", *lease.ProviderLeaseID, lease.Metadata["namespace"], *lease.ExpiresAt)
	released := false
	release := func() error {
		if released {
			return nil
		}
		released = true
		_, err := p.ReleaseLease(context.Background(), plugin.LeaseParams{BaseParams: base, ProviderLeaseID: lease.ProviderLeaseID, LeaseMetadata: lease.Metadata})
		return err
	}
	defer func() { _ = release() }()

	run := func(name, command string) error {
		var out string
		defer func() {
			if out != "" {
				fmt.Printf("  stdout: %s\n", out)
			}
		}()
		return step(name, func() error {
			r, err := p.Execute(ctx, plugin.ExecuteParams{BaseParams: base, Lease: lease, Command: command, TimeoutMs: 120000})
			if err != nil {
				return err
			}
			if r.TimedOut || r.ExitCode == nil || *r.ExitCode != 0 {
				return fmt.Errorf("exit %v timedOut=%v: %s", r.ExitCode, r.TimedOut, r.Stderr)
			}
			out = strings.TrimSpace(r.Stdout)
			return nil
		})
	}
	if *backend == "job" {
		if err := run("await the job and read its log", "ignored"); err != nil {
			return err
		}
	} else {
		if err := run("wait for the pod and exec (first command)", "echo hello from the sandbox"); err != nil {
			return err
		}
		if err := run("exec again (pod remembered)", "echo second command; exit 0"); err != nil {
			return err
		}
	}
	return step("release the lease", release)
}
