package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

// TestBenchCommand runs `paperclip-k8s bench -n 2 -parallel 2` through the
// built binary on the local control plane and checks that it prints every
// table (its figures are not checked: the benchmark asserts nothing).
func TestBenchCommand(t *testing.T) {
	is := is.New(t)
	out := benchBinary(t, "-n", "2", "-parallel", "2")
	for _, h := range []string{
		"paperclip-k8s bench: backend sandbox, n=2, parallel=2;",
		"### API requests per acquire",
		"| acquire | requests | sequential | tenant | latency | by verb |",
		"| first (new worker, new company) |",
		"| cold (new company) |",
		"| warm |",
		"### Execute `true`",
		"| exec | p50 | p95 | × bare `true` | API requests each |",
		"| provider Execute `true` |",
		"| bare remotecommand `true` |",
		"### First command",
		"| samples | acquire p50 | first execute p50 | total p50 | total p95 |",
		"### Acquire latency",
		"| tenant | parallel | acquires | p50 | p95 | max | round | acquires/s | requests | tenant requests | client-throttled | 429s |",
		"| cold (one new company) | 2 | 2 |",
		"### Sustained acquires (warm tenant)",
		"| acquires | parallel | wall | acquires/s | API requests/s | p50 | p95 | client-throttled | 429s |",
		"CPU during the sustained round (cores, of ",
		"### Worker process",
		"| start (exec → initialize reply) | idle RSS | peak RSS (VmHWM) |",
	} {
		is.True(strings.Contains(out, h)) // bench output lacks a header (see the test's list)
	}
	if t.Failed() {
		t.Logf("stdout:\n%s", out)
	}
}

// benchBinary runs `paperclip-k8s bench args... -kubeconfig` through the built
// binary on the local control plane and returns its stdout (logged if the
// test fails); a failed run fails the test with both outputs.
func benchBinary(t *testing.T, args ...string) string {
	t.Helper()
	env := requireEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, workerBin, append(append([]string{"bench"}, args...), "-kubeconfig", env.KubeconfigPath())...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("paperclip-k8s bench %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), tail(stderr.String(), 4000))
	}
	out := stdout.String()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stdout:\n%s", out)
		}
	})
	return out
}
