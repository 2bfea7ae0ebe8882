package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StartTimeout bounds Start when called from Main or StartT.
const StartTimeout = 2 * time.Minute

// skipReason is set by Main when the binaries are missing outside CI; the
// helpers then skip every test with it.
var skipReason string

// InCI reports whether CI=true (or 1): missing binaries must fail, not skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// Main runs a test package against one control plane, for TestMain:
//
//	var cluster *devcluster.Cluster
//
//	func TestMain(m *testing.M) {
//		devcluster.Main(m, devcluster.Options{Nodes: true}, func(c *devcluster.Cluster) { cluster = c })
//	}
//
// setup runs after the cluster is up and before the tests. Main stops the
// cluster after the tests (and on SIGINT/SIGTERM), keeps the work directory
// with the logs when a test failed (its path goes to stderr), and calls
// os.Exit. When the binaries are missing it fails the package with CI=true;
// otherwise it runs the tests with a nil cluster and NewNamespace/Require
// skip them with the reason.
func Main(m *testing.M, opts Options, setup func(*Cluster)) {
	os.Exit(run(m, opts, setup))
}

func run(m *testing.M, opts Options, setup func(*Cluster)) int {
	// Find (or build) the binaries before the start timeout begins: a cold
	// build takes minutes.
	if opts.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			return noBinaries(m, err)
		}
		opts.BinDir = dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	start := time.Now()
	c, err := Start(ctx, opts)
	cancel()
	if errors.Is(err, ErrNoBinaries) {
		return noBinaries(m, err)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: devcluster: start: %v\n", err)
		return 1
	}
	c.log.Info("cluster started", "took", time.Since(start).Round(time.Millisecond), "dir", c.dir, "host", c.host)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			c.Stop()
			os.Exit(2)
		}
	}()
	defer c.Stop() // also on a panic in setup

	if setup != nil {
		setup(c)
	}
	code := m.Run()
	if code != 0 && c.ownDir {
		c.keepDir = true
		fmt.Fprintf(os.Stderr, "devcluster: tests failed; logs kept in %s\n", c.dir)
	}
	c.Stop()
	return code
}

func noBinaries(m *testing.M, err error) int {
	if InCI() {
		fmt.Fprintf(os.Stderr, "FAIL: devcluster: CI=true and the control-plane binaries are missing: %v\n", err)
		return 1
	}
	skipReason = fmt.Sprintf("devcluster: control-plane binaries missing (run `bash hack/build-k8s-bins.sh` or set KUBE_TEST_BIN): %v", err)
	fmt.Fprintln(os.Stderr, "SKIP: "+skipReason)
	return m.Run()
}

// Require fails (CI=true) or skips the test when c is nil because Main found
// no binaries, and returns c.
func Require(t testing.TB, c *Cluster) *Cluster {
	t.Helper()
	if c != nil {
		return c
	}
	reason := skipReason
	if reason == "" {
		reason = "devcluster: no cluster (was devcluster.Main called from TestMain?)"
	}
	if InCI() {
		t.Fatal(reason)
	}
	t.Skip(reason)
	return nil
}

// StartT starts a cluster for one test and stops it in t.Cleanup. Missing
// binaries fail the test with CI=true and skip it otherwise.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			if InCI() {
				t.Fatalf("CI=true: %v", err)
			}
			t.Skip(err)
		}
		opts.BinDir = dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	c, err := Start(ctx, opts)
	if errors.Is(err, ErrNoBinaries) {
		if InCI() {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && c.ownDir {
			c.keepDir = true
			t.Logf("devcluster: logs kept in %s", c.dir)
		}
		c.Stop()
	})
	return c
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// NewNamespace creates a namespace for the test, with the given labels
// (e.g. pod-security.kubernetes.io/enforce), and its "default"
// ServiceAccount (so pods are admitted even before kube-controller-manager
// creates it, or without it). The namespace is deleted in t.Cleanup. A nil c
// is handled as in Require.
func NewNamespace(t testing.TB, c *Cluster, labels map[string]string) string {
	t.Helper()
	c = Require(t, c)
	base := strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	if base == "" {
		base = "test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: base + "-", Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.kube.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	})
	_, err = c.kube.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create default ServiceAccount: %v", err)
	}
	return ns.Name
}
