package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// demo runs one lease end to end: validate, acquire, wait for the pod and
// exec, release. Without --kubeconfig it builds (once) and starts the local
// control plane and stops it afterwards.
func demo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	rf := newRunFlags(fs, "run against this cluster instead of a local control plane")
	company := fs.String("company", "demo-company", "company id (the tenant namespace is derived from it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()

	p, err := plugin.New(rf.logger())
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

	fmt.Print(demoPlan(rf.kubeconfig, rf.backend))
	tg, err := openTarget(ctx, rf.kubeconfig, step, os.Stdout)
	if err != nil {
		return err
	}
	defer tg.stop()

	// The run's adapter is the config's default (a warm pool runs that one).
	cfg := map[string]any{"kubeconfig": string(tg.kubeconfig), "backend": rf.backend, "adapterType": "codex_local"}
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
	if err := step("acquire a lease ("+rf.backend+")", func() error {
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
	if rf.backend == "job" {
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

// demoPlan says what the demo is about to do (before a build that can take
// minutes).
func demoPlan(kubeconfig, backend string) string {
	var b strings.Builder
	b.WriteString("paperclip-k8s demo: one lease end to end, the provider running in this process.\n")
	n := 1
	if kubeconfig == "" {
		root := binRoot()
		fmt.Fprintf(&b, "  %d. build the control plane, once: etcd, kube-apiserver, kube-controller-manager,\n"+
			"     kube-scheduler and kwok, compiled from the Go module proxy (~7.5 min on 2 cores)\n"+
			"       into %s/<version>-<hash> (KUBE_TEST_BIN overrides it)\n"+
			"       Go's caches: %s\n"+
			"     then start it with fake nodes, an exec node and the stand-in Sandbox controller\n", n, root, goCaches())
		n++
	}
	fmt.Fprintf(&b, "  %d. validate the config and acquire a lease on the %s backend: the tenant\n"+
		"     namespace, the workload, its Secret and egress policy\n", n, backend)
	n++
	if backend == "job" {
		fmt.Fprintf(&b, "  %d. await the Job and read its pod's log\n", n)
	} else {
		fmt.Fprintf(&b, "  %d. wait for the pod and run two commands in it (pods/exec)\n", n)
	}
	n++
	fmt.Fprintf(&b, "  %d. release the lease (the workload is deleted)", n)
	if kubeconfig == "" {
		b.WriteString(" and stop the control plane")
	}
	b.WriteString("\n")
	return b.String()
}

// binRoot is where hack/build-k8s-bins.sh keeps the control-plane
// binaries: the parent of $KUBE_TEST_BIN, or <user cache>/paperclip-k8s/kube-bin.
func binRoot() string {
	if d := os.Getenv("KUBE_TEST_BIN"); d != "" {
		return filepath.Dir(filepath.Clean(d))
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home := os.Getenv("HOME")
		if home == "" {
			home = "/root"
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "paperclip-k8s", "kube-bin")
}

// goCaches names Go's module and build caches (where a build's downloads
// and compiled packages stay).
func goCaches() string {
	out, err := exec.Command("go", "env", "GOMODCACHE", "GOCACHE").Output()
	if err != nil {
		return "see go env GOMODCACHE GOCACHE"
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return "see go env GOMODCACHE GOCACHE"
	}
	return f[0] + " (modules), " + f[1] + " (builds)"
}

// buildGroups are the go build commands of hack/build-k8s-bins.sh, in order:
// each writes its binaries into the build directory when it is done.
var buildGroups = [][]string{{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}, {"etcd"}, {"kwok"}}

// watchBuild writes buildStatus every interval until stop is closed, while
// a build runs.
func watchBuild(w io.Writer, root string, start time.Time, every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if line := buildStatus(root, time.Since(start)); line != "" {
				fmt.Fprintln(w, line)
			}
		}
	}
}

// buildStatus describes the build in progress under root (the newest
// .build.* directory of hack/build-k8s-bins.sh): which go build runs, after
// elapsed. "" when no build is under way there.
func buildStatus(root string, elapsed time.Duration) string {
	dirs, _ := filepath.Glob(filepath.Join(root, ".build.*"))
	var newest string
	var newestAt time.Time
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() && fi.ModTime().After(newestAt) {
			newest, newestAt = d, fi.ModTime()
		}
	}
	if newest == "" {
		return ""
	}
	for i, g := range buildGroups {
		done := true
		for _, b := range g {
			if _, err := os.Stat(filepath.Join(newest, b)); err != nil {
				done = false
			}
		}
		if !done {
			return fmt.Sprintf("  %s: building %s (%d/%d) into %s", elapsed.Round(time.Second), strings.Join(g, ", "), i+1, len(buildGroups), newest)
		}
	}
	return fmt.Sprintf("  %s: installing the binaries", elapsed.Round(time.Second))
}
