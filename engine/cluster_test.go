package engine_test

// Tests against a real control plane (internal/devenv): kube-apiserver,
// etcd, kube-controller-manager (garbage collector), kube-scheduler, kwok,
// the stand-in Sandbox controller and the exec node. What Kubernetes itself
// enforces — server-side apply, ownerReference GC, Pod Security admission,
// watch semantics — is checked here, not with the fake client.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

var env *devenv.Env

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := devcluster.BinDir()
		if err != nil {
			if devcluster.InCI() {
				fmt.Fprintln(os.Stderr, "CI=true and no control-plane binaries:", err)
				return 1
			}
			fmt.Fprintln(os.Stderr, "SKIP cluster tests: no control-plane binaries:", err)
			return m.Run()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		env, err = devenv.Start(ctx, devenv.Options{BinDir: dir})
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting the control plane:", err)
			return 1
		}
		defer env.Stop()
		return m.Run()
	}()
	os.Exit(code)
}

func requireCluster(t *testing.T) {
	t.Helper()
	if env == nil {
		if devcluster.InCI() {
			t.Fatal("no control plane")
		}
		t.Skip("no control-plane binaries (bash hack/build-k8s-bins.sh)")
	}
}

// realEngine is an engine on the control plane, with a discovery-backed
// RESTMapper as the provider uses.
func realEngine(t *testing.T) *engine.Engine {
	t.Helper()
	requireCluster(t)
	return realEngineB(t)
}

func realEngineB(t testing.TB) *engine.Engine {
	disc, err := discovery.NewDiscoveryClientForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	return engine.New(testutil.TestCatalog(t), env.Dynamic(), mapper, env.Kube().CoreV1().RESTClient(), nil)
}

// clusterValues are the standard-job values for a fresh namespace and run.
func clusterValues(t *testing.T, name string) (string, map[string]any) {
	vc := valuestest.LoadShipped(t, name)
	ns := "it-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		ns = ns[:50]
	}
	ns = fmt.Sprintf("%s-%x", strings.TrimRight(ns, "-"), time.Now().UnixNano()&0xffffff)
	vc.Values["namespace"] = ns
	run := vc.Values["run"].(map[string]any)
	run["name"] = "pc-" + strings.ToLower(fmt.Sprintf("%x", time.Now().UnixNano()))
	run["secretName"] = run["name"].(string) + "-env"
	run["egressPolicyName"] = run["name"].(string) + "-egress"
	run["deadlineTime"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	t.Cleanup(func() {
		_ = env.Kube().CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	return ns, vc.Values
}

// tenant returns an engine on the control plane and a fresh namespace
// whose tenant objects are applied from the named values.
func tenant(t *testing.T, valuesName string) (*engine.Engine, string, map[string]any) {
	t.Helper()
	e := realEngine(t)
	ns, values := clusterValues(t, valuesName)
	if _, err := e.Apply(context.Background(), e.Catalog.Used(resource.UseTenant), ns, values); err != nil {
		t.Fatalf("applying the tenant: %v", err)
	}
	return e, ns, values
}

func installCiliumCRD(t *testing.T) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "testdata", "crds", "ciliumnetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd unstructured.Unstructured
	if err := yaml.Unmarshal(raw, &crd.Object); err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	_, err = env.Dynamic().Resource(gvr).Create(context.Background(), &crd, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := env.Dynamic().Resource(gvr).Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			m := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD not established: %v", err)
	}
}

// waitGone waits until an object is deleted (the garbage collector works
// asynchronously).
func waitGone(t *testing.T, e *engine.Engine, ref engine.Ref) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := e.Get(ctx, ref)
		if engine.IsGone(err) {
			return true, nil
		}
		return false, err
	})
	if err != nil {
		t.Fatalf("%s is still there: %v", ref, err)
	}
}

func TestClusterTenantApplyReapplyAndModeSwitch(t *testing.T) {
	is := is.New(t)
	e := realEngine(t)
	installCiliumCRD(t)
	ctx := context.Background()
	ns, values := clusterValues(t, "standard-job")
	tenant := e.Catalog.Used(resource.UseTenant)
	_, err := e.Apply(ctx, tenant, ns, values)
	is.NoErr(err)

	nsObj, err := env.Kube().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(nsObj.Labels["pod-security.kubernetes.io/enforce"], "restricted")
	q, err := env.Kube().CoreV1().ResourceQuotas(ns).Get(ctx, "paperclip-quota", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(q.Spec.Hard.Pods().String(), "20")
	_, err = env.Kube().NetworkingV1().NetworkPolicies(ns).Get(ctx, "paperclip-egress-allow", metav1.GetOptions{})
	is.NoErr(err)

	// A config change reaches the existing tenant.
	values["config"].(map[string]any)["resourceQuota"] = map[string]any{"pods": "5"}
	values["tenantLabels"].(map[string]any)["paperclip.io/tier"] = "gold"
	_, err = e.Apply(ctx, tenant, ns, values)
	is.NoErr(err)
	q, err = env.Kube().CoreV1().ResourceQuotas(ns).Get(ctx, "paperclip-quota", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(q.Spec.Hard.Pods().String(), "5")
	_, hasCPU := q.Spec.Hard[corev1.ResourceRequestsCPU]
	is.True(!hasCPU) // server-side apply removed the field we no longer set
	nsObj, err = env.Kube().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(nsObj.Labels["paperclip.io/tier"], "gold")

	// Switching the egress mode leaves only the new mode's policy.
	values["config"].(map[string]any)["egressMode"] = "cilium"
	_, err = e.Apply(ctx, tenant, ns, values)
	is.NoErr(err)
	_, err = env.Kube().NetworkingV1().NetworkPolicies(ns).Get(ctx, "paperclip-egress-allow", metav1.GetOptions{})
	is.True(apierrors.IsNotFound(err))
	cnp, _ := e.Catalog.Get("ciliumnetworkpolicy-egress")
	_, err = e.Get(ctx, engine.Ref{Resource: cnp, Namespace: ns, Name: "paperclip-egress-fqdn"})
	is.NoErr(err)
	_, err = env.Kube().NetworkingV1().NetworkPolicies(ns).Get(ctx, "paperclip-deny-all", metav1.GetOptions{})
	is.NoErr(err) // the default deny stays

	values["config"].(map[string]any)["egressMode"] = "standard"
	_, err = e.Apply(ctx, tenant, ns, values)
	is.NoErr(err)
	_, err = e.Get(ctx, engine.Ref{Resource: cnp, Namespace: ns, Name: "paperclip-egress-fqdn"})
	is.True(engine.IsGone(err))
}

func TestClusterJobLifecycle(t *testing.T) {
	is := is.New(t)
	e, ns, values := tenant(t, "standard-job")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	job, _ := e.Catalog.Get("job")
	w, err := e.Create(ctx, job, ns, values, nil)
	is.NoErr(err)
	secretSpec, _ := e.Catalog.Get("secret")
	sec, err := e.Create(ctx, secretSpec, ns, values, w)
	is.NoErr(err)

	w, st, err := e.Wait(ctx, job, w, resource.Succeeded)
	is.NoErr(err)
	is.Equal(st.State, resource.Succeeded)
	pod, err := e.FindPod(ctx, job, w)
	is.NoErr(err)
	is.True(engine.ControlledBy(pod, w))
	is.NoErr(env.Node.WriteLog(ns, pod.GetName(), "agent", []byte("agent said hello\n")))
	logs, err := e.Logs(ctx, pod, job.Pods.Container)
	is.NoErr(err)
	is.Equal(string(logs), "agent said hello\n")

	deleted, err := e.Release(ctx, engine.RefOf(job, w))
	is.NoErr(err)
	is.True(deleted)
	podSpec, _ := e.Catalog.Pod()
	waitGone(t, e, engine.RefOf(job, w))
	waitGone(t, e, engine.RefOf(podSpec, pod))
	waitGone(t, e, engine.RefOf(secretSpec, sec)) // garbage collected through its ownerReference
}

func TestClusterSandboxLifecycle(t *testing.T) {
	is := is.New(t)
	e, ns, values := tenant(t, "standard-cidrs-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sb, _ := e.Catalog.Get("sandbox")
	w, err := e.Create(ctx, sb, ns, values, nil)
	is.NoErr(err)
	var created []engine.Ref
	for _, s := range e.Catalog.Used(resource.UseRun) {
		o, err := e.Create(ctx, s, ns, values, w)
		is.NoErr(err)
		if o != nil {
			created = append(created, engine.RefOf(s, o))
		}
	}
	is.Equal(len(created), 2) // the Secret and the scoped NetworkPolicy

	w, st, err := e.Wait(ctx, sb, w, resource.Ready)
	is.NoErr(err)
	is.Equal(st.Reason, "DependenciesReady")
	pod, err := e.FindPod(ctx, sb, w)
	is.NoErr(err)
	is.True(engine.ControlledBy(pod, w))
	is.Equal(pod.GetLabels()["paperclip.io/role"], "agent")

	ex, err := podexec.NewExecutor(env.RESTConfig(), podexec.Options{})
	is.NoErr(err)
	res, err := ex.Run(ctx, podexec.Request{Namespace: ns, Pod: pod.GetName(), Container: sb.Pods.Container, Command: "echo hello from $0"})
	is.NoErr(err)
	is.Equal(*res.ExitCode, 0)
	is.True(strings.HasPrefix(string(res.Stdout), "hello from"))

	_, err = e.Release(ctx, engine.RefOf(sb, w))
	is.NoErr(err)
	podSpec, _ := e.Catalog.Pod()
	waitGone(t, e, engine.RefOf(sb, w))
	waitGone(t, e, engine.RefOf(podSpec, pod))
	for _, r := range created {
		waitGone(t, e, r)
	}
}

// A Sandbox whose pod fails is reported failed on the event that says so.
func TestClusterSandboxPodFailureEndsTheWait(t *testing.T) {
	is := is.New(t)
	e, ns, values := tenant(t, "standard-cidrs-sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := values["run"].(map[string]any)
	run["labels"].(map[string]any)["devcluster.paperclip.io/fail"] = "true" // kwok fails the pod
	sb, _ := e.Catalog.Get("sandbox")
	w, err := e.Create(ctx, sb, ns, values, nil)
	is.NoErr(err)
	// kwok runs the pod (Ready) and then fails it; a waiter for completion
	// gets the failure from the event that reports it.
	_, _, err = e.Wait(ctx, sb, w, resource.Succeeded)
	var te *engine.TerminalError
	is.True(errors.As(err, &te))
	is.Equal(te.Status.State, resource.Failed)
	is.Equal(te.Status.Reason, "PodFailed")
	is.True(ctx.Err() == nil) // the event ended the wait, not the timeout
}

// The tenant namespace enforces Pod Security "restricted": the provider's
// pods are admitted (the lifecycle tests run them there), a pod that is not
// compliant is rejected.
func TestClusterPodSecurityRejectsNonCompliantPods(t *testing.T) {
	is := is.New(t)
	e, ns, values := tenant(t, "standard-job")
	ctx := context.Background()
	priv := true
	_, err := env.Kube().CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "privileged"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox",
			SecurityContext: &corev1.SecurityContext{Privileged: &priv}}}},
	}, metav1.CreateOptions{})
	is.True(apierrors.IsForbidden(err))
	is.True(strings.Contains(err.Error(), "violates PodSecurity \"restricted:latest\""))

	// The provider's own pod template is admitted.
	job, _ := e.Catalog.Get("job")
	w, err := e.Create(ctx, job, ns, values, nil)
	is.NoErr(err)
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w, _, err = e.Wait(tctx, job, w, resource.Succeeded, resource.Ready)
	is.NoErr(err)
	_, err = e.FindPod(ctx, job, w)
	is.NoErr(err)
}

// SetDeadline moves a live workload's deadline, and the UID in the patch
// makes the API server refuse it for an object that replaced ours.
func TestClusterSetDeadlineIsUIDPinned(t *testing.T) {
	is := is.New(t)
	e, ns, values := tenant(t, "standard-cidrs-sandbox")
	ctx := context.Background()
	sb, _ := e.Catalog.Get("sandbox")
	w, err := e.Create(ctx, sb, ns, values, nil)
	is.NoErr(err)
	when := time.Now().Add(10 * time.Minute).Truncate(time.Second)
	is.NoErr(e.SetDeadline(ctx, engine.RefOf(sb, w), when))
	got, err := e.Get(ctx, engine.RefOf(sb, w))
	is.NoErr(err)
	v, _, _ := unstructured.NestedString(got.Object, "spec", "shutdownTime")
	is.Equal(v, when.UTC().Format(time.RFC3339))

	stale := engine.RefOf(sb, w)
	stale.UID = "00000000-0000-0000-0000-000000000000"
	err = e.SetDeadline(ctx, stale, when.Add(time.Minute))
	is.True(err != nil) // another UID: refused
	got, err = e.Get(ctx, engine.RefOf(sb, w))
	is.NoErr(err)
	v, _, _ = unstructured.NestedString(got.Object, "spec", "shutdownTime")
	is.Equal(v, when.UTC().Format(time.RFC3339)) // unchanged
}
