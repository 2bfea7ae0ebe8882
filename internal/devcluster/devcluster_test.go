package devcluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
)

var (
	cluster *devcluster.Cluster
	// fakeKubelet stands in for the exec/log server on Options.KubeletPort.
	fakeKubelet   *httptest.Server
	kubeletHits   atomic.Int64
	kubeletLogTag = "hello from the fake kubelet"
)

func TestMain(m *testing.M) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeKubelet = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kubeletHits.Add(1)
		if strings.HasPrefix(r.URL.Path, "/containerLogs/") {
			fmt.Fprintf(w, "%s %s\n", kubeletLogTag, r.URL.Path)
			return
		}
		http.NotFound(w, r)
	}))
	fakeKubelet.Listener = l
	fakeKubelet.StartTLS() // in-process: it ends with the test binary
	devcluster.Main(m, devcluster.Options{
		Nodes:       true,
		KubeletPort: l.Addr().(*net.TCPAddr).Port,
	}, func(c *devcluster.Cluster) { cluster = c })
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func sleepPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"sleep", "infinity"}}},
		},
	}
}

func TestServerVersionAndKubeconfig(t *testing.T) {
	is := is.New(t)
	devcluster.Require(t, cluster)
	v, err := cluster.Kube().Discovery().ServerVersion()
	is.NoErr(err)
	is.Equal(v.GitVersion, "v1.37.2")

	cfg, err := clientcmd.RESTConfigFromKubeConfig(cluster.KubeconfigBytes())
	is.NoErr(err)
	is.Equal(cfg.Host, cluster.Host())
	is.True(len(cfg.CAData) > 0) // verifies the serving cert, no insecure-skip-verify
	kc, err := kubernetes.NewForConfig(cfg)
	is.NoErr(err)
	_, err = kc.CoreV1().Namespaces().Get(ctxT(t, 30*time.Second), "default", metav1.GetOptions{})
	is.NoErr(err)

	b, err := os.ReadFile(cluster.KubeconfigPath())
	is.NoErr(err)
	is.Equal(string(b), string(cluster.KubeconfigBytes()))
}

func TestFakeNode(t *testing.T) {
	is := is.New(t)
	devcluster.Require(t, cluster)
	node, err := cluster.Kube().CoreV1().Nodes().Get(ctxT(t, 30*time.Second), devcluster.NodeName, metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(node.Annotations["kwok.x-k8s.io/node"], "fake")
	is.Equal(int(node.Status.DaemonEndpoints.KubeletEndpoint.Port), fakeKubelet.Listener.Addr().(*net.TCPAddr).Port)
	var ip string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
		}
	}
	is.Equal(ip, "127.0.0.1")
	cpu := node.Status.Capacity[corev1.ResourceCPU]
	is.Equal(cpu.String(), "32")
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	is.True(ready)
}

// Pod logs go through the real API server to the node's advertised kubelet
// port, i.e. to the server the test runs there.
func TestPodLogsReachKubeletPort(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	kube := cluster.Kube()
	_, err := kube.CoreV1().Pods(ns).Create(ctx, sleepPod("logs"), metav1.CreateOptions{})
	is.NoErr(err)
	_, err = devcluster.WaitPod(ctx, kube, ns, "logs", func(p *corev1.Pod) bool { return p != nil && p.Status.Phase == corev1.PodRunning })
	is.NoErr(err)
	body, err := kube.CoreV1().Pods(ns).GetLogs("logs", &corev1.PodLogOptions{Container: "main"}).DoRaw(ctx)
	is.NoErr(err)
	is.Equal(string(body), fmt.Sprintf("%s /containerLogs/%s/logs/main\n", kubeletLogTag, ns))
	is.True(kubeletHits.Load() > 0)
}

func TestJobCompletesAndPlainPodStaysRunning(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 90*time.Second)
	kube := cluster.Kube()

	// Watch pod phases from before anything exists, so every transition is
	// seen.
	w, err := kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	is.NoErr(err)
	defer w.Stop()

	_, err = kube.CoreV1().Pods(ns).Create(ctx, sleepPod("long-lived"), metav1.CreateOptions{})
	is.NoErr(err)
	_, err = devcluster.WaitPod(ctx, kube, ns, "long-lived", func(p *corev1.Pod) bool { return p != nil && p.Status.Phase == corev1.PodRunning })
	is.NoErr(err)

	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "work"},
		Spec: batchv1.JobSpec{
			BackoffLimit: new(int32(0)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					// Keep the pod Running for a moment so the test sees the
					// Job active before it completes.
					Annotations: map[string]string{devcluster.CompleteDelayAnnotation: "2s"},
				},
				Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers:    []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"true"}}},
				},
			},
		},
	}
	_, err = kube.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{})
	is.NoErr(err)

	// Running -> Succeeded for the Job's pod, as seen by the watch.
	var jobPod string
	var phases []corev1.PodPhase
	for jobPod == "" || phases[len(phases)-1] != corev1.PodSucceeded {
		select {
		case ev, ok := <-w.ResultChan():
			is.True(ok) // watch ended early
			p, _ := ev.Object.(*corev1.Pod)
			if p == nil || p.Labels["job-name"] != "work" {
				continue
			}
			jobPod = p.Name
			if len(phases) == 0 || phases[len(phases)-1] != p.Status.Phase {
				phases = append(phases, p.Status.Phase)
			}
			if p.Status.Phase == corev1.PodRunning {
				// While the pod runs, the Job is active and not complete.
				j, err := kube.BatchV1().Jobs(ns).Get(ctx, "work", metav1.GetOptions{})
				is.NoErr(err)
				is.True(!jobDone(j))
			}
		case <-ctx.Done():
			t.Fatalf("job pod phases so far: %v: %v", phases, ctx.Err())
		}
	}
	is.True(containsPhase(phases, corev1.PodRunning))

	err = waitJob(ctx, kube, ns, "work")
	is.NoErr(err)
	j, err := kube.BatchV1().Jobs(ns).Get(ctx, "work", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(j.Status.Succeeded, int32(1))

	// The Job's pod has completed; the pod without a Job owner is untouched
	// by the pod-complete stage.
	p, err := kube.CoreV1().Pods(ns).Get(ctx, "long-lived", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(p.Status.Phase, corev1.PodRunning)
	is.Equal(p.Spec.NodeName, devcluster.NodeName)
	is.True(len(p.Status.PodIPs) > 0)
}

func containsPhase(ps []corev1.PodPhase, want corev1.PodPhase) bool {
	for _, p := range ps {
		if p == want {
			return true
		}
	}
	return false
}

func jobDone(j *batchv1.Job) bool {
	for _, c := range j.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func waitJob(ctx context.Context, kube kubernetes.Interface, ns, name string) error {
	w, err := kube.BatchV1().Jobs(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		return err
	}
	defer w.Stop()
	if j, err := kube.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && jobDone(j) {
		return checkComplete(j)
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errors.New("watch closed")
			}
			if j, ok := ev.Object.(*batchv1.Job); ok && jobDone(j) {
				return checkComplete(j)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func checkComplete(j *batchv1.Job) error {
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
			return nil
		}
	}
	return fmt.Errorf("job %s finished but not Complete: %+v", j.Name, j.Status.Conditions)
}

func TestFailLabelFailsPod(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	pod := sleepPod("doomed")
	pod.Labels = map[string]string{devcluster.FailLabel: "true"}
	_, err := cluster.Kube().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	is.NoErr(err)
	p, err := devcluster.WaitPod(ctx, cluster.Kube(), ns, "doomed", func(p *corev1.Pod) bool { return p != nil && p.Status.Phase == corev1.PodFailed })
	is.NoErr(err)
	is.Equal(len(p.Status.ContainerStatuses), 1)
	term := p.Status.ContainerStatuses[0].State.Terminated
	is.True(term != nil)
	is.Equal(term.ExitCode, int32(1))
}

func TestOwnerReferenceGarbageCollection(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	cms := cluster.Kube().CoreV1().ConfigMaps(ns)
	owner, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner"}}, metav1.CreateOptions{})
	is.NoErr(err)
	_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Name: "dependent",
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID,
			Controller: new(true), BlockOwnerDeletion: new(true),
		}},
	}}, metav1.CreateOptions{})
	is.NoErr(err)
	// A pod owned by the ConfigMap as well: the GC deletes it, kwok finalises.
	pod := sleepPod("dependent-pod")
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID}}
	_, err = cluster.Kube().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	is.NoErr(err)

	is.NoErr(cms.Delete(ctx, "owner", metav1.DeleteOptions{PropagationPolicy: new(metav1.DeletePropagationBackground)}))

	w, err := cms.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=dependent"})
	is.NoErr(err)
	defer w.Stop()
	if _, err := cms.Get(ctx, "dependent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		for gone := false; !gone; {
			select {
			case ev := <-w.ResultChan():
				gone = ev.Type == watch.Deleted
			case <-ctx.Done():
				t.Fatalf("dependent ConfigMap not garbage-collected: %v", ctx.Err())
			}
		}
	}
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "dependent-pod", func(p *corev1.Pod) bool { return p == nil })
	is.NoErr(err)
}

func TestPodSecurityRestricted(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	})
	ctx := ctxT(t, 60*time.Second)
	pods := cluster.Kube().CoreV1().Pods(ns)

	bad := sleepPod("privileged")
	bad.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: new(true)}
	_, err := pods.Create(ctx, bad, metav1.CreateOptions{})
	is.True(apierrors.IsForbidden(err))
	is.True(strings.Contains(err.Error(), "violates PodSecurity \"restricted:latest\""))
	is.True(strings.Contains(err.Error(), "privileged"))

	// Even an unprivileged pod without the restricted settings is rejected.
	_, err = pods.Create(ctx, sleepPod("plain"), metav1.CreateOptions{})
	is.True(apierrors.IsForbidden(err))

	good := sleepPod("compliant")
	good.Spec.SecurityContext = &corev1.PodSecurityContext{
		RunAsNonRoot:   new(true),
		RunAsUser:      new(int64(1000)),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	good.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{
		AllowPrivilegeEscalation: new(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
	_, err = pods.Create(ctx, good, metav1.CreateOptions{})
	is.NoErr(err)
	_, err = devcluster.WaitPod(ctx, cluster.Kube(), ns, "compliant", func(p *corev1.Pod) bool { return p != nil && p.Status.Phase == corev1.PodRunning })
	is.NoErr(err)
}

var sandboxGVR = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}

// The CRD alone (no controller in this package): defaults, enum validation,
// status subresource.
func TestSandboxCRD(t *testing.T) {
	is := is.New(t)
	ns := devcluster.NewNamespace(t, cluster, nil)
	ctx := ctxT(t, 60*time.Second)
	t0 := time.Now()
	is.NoErr(devcluster.InstallSandboxCRD(ctx, cluster.Dynamic()))
	t.Logf("CRD established after %v", time.Since(t0).Round(time.Millisecond))
	is.NoErr(devcluster.InstallSandboxCRD(ctx, cluster.Dynamic())) // idempotent
	t.Logf("CRD re-applied after %v", time.Since(t0).Round(time.Millisecond))

	sbs := cluster.Dynamic().Resource(sandboxGVR).Namespace(ns)
	sb := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "agents.x-k8s.io/v1beta1",
		"kind":       "Sandbox",
		"metadata":   map[string]any{"name": "crd-only"},
		"spec": map[string]any{
			"shutdownTime": "2030-01-02T03:04:05Z",
			"podTemplate": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"a": "b"}, "name": "pruned"},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "main", "image": "busybox", "anything": int64(1)}}},
			},
		},
		"status": map[string]any{"selector": "ignored-on-create"},
	}}
	got, err := sbs.Create(ctx, sb, metav1.CreateOptions{})
	is.NoErr(err)
	policy, _, _ := unstructured.NestedString(got.Object, "spec", "shutdownPolicy")
	is.Equal(policy, "Retain")
	mode, _, _ := unstructured.NestedString(got.Object, "spec", "operatingMode")
	is.Equal(mode, "Running")
	_, hasName, _ := unstructured.NestedString(got.Object, "spec", "podTemplate", "metadata", "name")
	is.True(!hasName) // pruned
	cs, _, _ := unstructured.NestedSlice(got.Object, "spec", "podTemplate", "spec", "containers")
	is.Equal(cs[0].(map[string]any)["anything"], int64(1)) // pod spec preserved as written
	_, hasStatus := got.Object["status"]
	is.True(!hasStatus) // status only through the subresource

	_, err = sbs.Patch(ctx, "crd-only", "application/merge-patch+json",
		[]byte(`{"status":{"selector":"x=y","conditions":[{"type":"Ready","status":"True","reason":"R","message":"","lastTransitionTime":"2030-01-01T00:00:00Z","observedGeneration":1}]}}`),
		metav1.PatchOptions{}, "status")
	is.NoErr(err)
	got, err = sbs.Get(ctx, "crd-only", metav1.GetOptions{})
	is.NoErr(err)
	sel, _, _ := unstructured.NestedString(got.Object, "status", "selector")
	is.Equal(sel, "x=y")

	bad := sb.DeepCopy()
	bad.SetName("bad-policy")
	is.NoErr(unstructured.SetNestedField(bad.Object, "Sometimes", "spec", "shutdownPolicy"))
	_, err = sbs.Create(ctx, bad, metav1.CreateOptions{})
	is.True(apierrors.IsInvalid(err))

	bad = sb.DeepCopy()
	bad.SetName("bad-time")
	is.NoErr(unstructured.SetNestedField(bad.Object, "tomorrow", "spec", "shutdownTime"))
	_, err = sbs.Create(ctx, bad, metav1.CreateOptions{})
	is.True(apierrors.IsInvalid(err))

	bad = sb.DeepCopy()
	bad.SetName("no-template")
	unstructured.RemoveNestedField(bad.Object, "spec", "podTemplate")
	_, err = sbs.Create(ctx, bad, metav1.CreateOptions{})
	is.True(apierrors.IsInvalid(err))
}

// A second, private cluster: every process it started is gone after Stop,
// Stop is idempotent and the temporary directory is removed.
func TestStartStopLeavesNoProcesses(t *testing.T) {
	is := is.New(t)
	devcluster.Require(t, cluster)
	ctx := ctxT(t, devcluster.StartTimeout)

	// A directory left by a test binary that died without Stop: its owner
	// pid is gone, so Start removes it.
	dead := exec.Command("true")
	is.NoErr(dead.Run())
	stale, err := os.MkdirTemp("", "devcluster-")
	is.NoErr(err)
	is.NoErr(os.WriteFile(filepath.Join(stale, "owner.pid"), []byte(strconv.Itoa(dead.Process.Pid)), 0o644))

	var log strings.Builder
	// Log: devcluster serialises its writes; the Builder is read after Stop.
	t0 := time.Now()
	c, err := devcluster.Start(ctx, devcluster.Options{Nodes: true, Log: &log})
	is.NoErr(err)
	_, err = os.Stat(stale)
	is.True(os.IsNotExist(err)) // stale directory removed
	t.Logf("Start (etcd, kube-apiserver, kcm, scheduler, kwok, node Ready): %v", time.Since(t0).Round(time.Millisecond))
	t.Cleanup(c.Stop)
	pids := c.PIDs()
	is.Equal(len(pids), 5) // etcd, apiserver, kcm, scheduler, kwok
	for _, pid := range pids {
		is.NoErr(syscall.Kill(pid, 0)) // running
	}
	_, err = c.Kube().CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	is.NoErr(err)
	dir := c.Dir()

	t0 = time.Now()
	c.Stop()
	t.Logf("Stop: %v", time.Since(t0).Round(time.Millisecond))
	c.Stop()
	for _, pid := range pids {
		is.True(errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)) // process gone
	}
	_, err = os.Stat(dir)
	is.True(os.IsNotExist(err))
	is.True(strings.Contains(log.String(), "[kube-apiserver] "))
}

func TestStartWithoutBinaries(t *testing.T) {
	is := is.New(t)
	_, err := devcluster.Start(t.Context(), devcluster.Options{BinDir: t.TempDir()})
	is.True(errors.Is(err, devcluster.ErrNoBinaries))
}

// The kwok stage file is the one kwok was started with, and it parses.
func TestKwokStagesEmbedded(t *testing.T) {
	is := is.New(t)
	c := devcluster.Require(t, cluster)
	b, err := os.ReadFile(c.Dir() + "/kwok-stages.yaml")
	is.NoErr(err)
	is.Equal(string(b), string(devcluster.KwokStages))
	for _, name := range []string{"node-initialize", "pod-ready", "pod-complete", "pod-fail", "pod-delete", "pod-container-creating", "pod-container-waiting", "pod-image-pull-backoff"} {
		is.True(strings.Contains(string(b), "name: "+name+"\n"))
	}
}
