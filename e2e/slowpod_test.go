package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devcluster"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// slowPodDelay is how long after it enters ContainerCreating the kwok stage
// makes the run's pod Ready (a cold image pull on a real cluster): longer
// than the 15 s the host gives its first command of a run.
const slowPodDelay = 20 * time.Second

// TestPaperclipSlowPod: an agent run on the sandbox backend whose pod is
// Ready only 20 s after it was created succeeds through the real
// paperclip-server. The plugin waits for the pod in
// environmentRealizeWorkspace (the host gives it max(timeoutMs,
// bridgeRequestTimeoutMs) + 30 s), not in the host's first command (a fixed
// 15 s).
//
// The operator makes the pod slow: PAPERCLIP_K8S_POD_ANNOTATIONS puts the
// kwok stage annotation paperclip-k8s.test/ready-after on every agent pod.
// The host scrubs the worker's environment (buildPluginWorkerEnv in
// 2026.916.1 passes only a fixed list of variables), so the variable cannot
// come from the server's environment: the test bakes it into the package's
// launcher (bakeWorkerEnv), as an operator of this host version would have
// to. The test checks that the pod really carried the annotation and became
// Ready at least 20 s after its creation (timestamps the API server stored:
// an assertion about the setup, not about our speed).
func TestPaperclipSlowPod(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the paperclip harness reads /proc and uses Linux process groups")
	}
	is := is.New(t)
	annotations := map[string]string{devcluster.ReadyAfterAnnotation: slowPodDelay.String()}
	b, err := json.Marshal(annotations)
	is.NoErr(err)
	s := startStack(t, stackOptions{WorkerEnv: map[string]string{"PAPERCLIP_K8S_POD_ANNOTATIONS": string(b)}})
	ctx, srv, rec := s.ctx, s.srv, s.rec
	pods, err := startPodHistory(ctx, s.env.Kube())
	is.NoErr(err)

	company, c := s.company(t, "e2e slow pod")
	tenant := c.tenant
	e, err := srv.CreateEnvironment(ctx, company.ID, "k8s-slow-pod", s.config("sandbox"))
	is.NoErr(err)
	before := c.leaseIDs(ctx, t, e.ID)
	run := s.runAgent(t, company.ID, e.ID, "e2e-slow-pod", 4*time.Minute)
	if run.Status != "succeeded" {
		t.Fatalf("run %s on a pod Ready after %v: status %q error %q code %q", run.ID, slowPodDelay, run.Status, deref(run.Error), deref(run.ErrorCode))
	}
	is.Equal(run.ResultJSON["result"], "done (fake)")
	ls := c.released(ctx, t, e.ID, before, "sandbox", "released")
	is.True(ls[0].HeartbeatRunID != nil && *ls[0].HeartbeatRunID == run.ID) // the run's own lease
	execs, _ := c.podCalls(t, s.nodeLog, ls[0])
	t.Logf("the run's pod served %d execs", execs)
	is.True(execs >= 10) // the agent's commands ran in the slow pod

	// The setup: the run's (only) pod carried the annotation and became
	// Ready at least slowPodDelay after it was created.
	w, ok := rec.find(gvrSandbox, tenant, deref(ls[0].ProviderLeaseID))
	if !ok {
		t.Fatalf("the run's Sandbox %s/%s was never seen", tenant, deref(ls[0].ProviderLeaseID))
	}
	var runPods []seenObject
	for _, o := range rec.byRun(w.RunID) {
		if o.GVR == gvrPod {
			runPods = append(runPods, o)
		}
	}
	if len(runPods) != 1 {
		t.Fatalf("the run had %d pods, want 1: %v", len(runPods), runPods)
	}
	pod, ok := pods.last(runPods[0].UID)
	if !ok {
		t.Fatalf("no version of %s was recorded", runPods[0])
	}
	is.Equal(pod.Annotations[devcluster.ReadyAfterAnnotation], slowPodDelay.String()) // from PAPERCLIP_K8S_POD_ANNOTATIONS
	created := pod.CreationTimestamp.Time
	ready, ok := pods.readySince(runPods[0].UID)
	if !ok {
		t.Fatalf("pod %s/%s was never Ready (last phase %s)", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	t.Logf("pod %s/%s: created %s, Ready %s (after %v)", pod.Namespace, pod.Name,
		created.Format(time.RFC3339), ready.Format(time.RFC3339), ready.Sub(created))
	if ready.Sub(created) < slowPodDelay {
		t.Fatalf("pod %s/%s was Ready %v after its creation, want at least %v: the kwok stage did not delay it", pod.Namespace, pod.Name, ready.Sub(created), slowPodDelay)
	}

	// The wait happened in environmentRealizeWorkspace: the plugin logs
	// "workspace ready" for this pod when realize returns.
	lines, err := srv.PluginLines(s.plugin.ID)
	is.NoErr(err)
	var realized string
	for _, l := range lines {
		if strings.Contains(l.Text(), `msg="workspace ready"`) && strings.Contains(l.Text(), "pod="+pod.Name) {
			realized = l.Text()
		}
	}
	t.Logf("realize: %s", realized)
	is.True(realized != "") // realize waited for the run's pod
}

// podHistory keeps, per pod UID, the last version of every agent pod (label
// paperclip.io/managed-by) the API server sent, and when it first saw the
// pod's Ready condition True: the pods are gone once the run's lease is
// released.
type podHistory struct {
	mu    sync.Mutex
	pods  map[types.UID]*corev1.Pod
	ready map[types.UID]time.Time // the Ready condition's lastTransitionTime
}

func startPodHistory(ctx context.Context, kube kubernetes.Interface) (*podHistory, error) {
	h := &podHistory{pods: map[types.UID]*corev1.Pod{}, ready: map[types.UID]time.Time{}}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = policy.LabelManagedBy + "=" + policy.ManagedByValue
	}))
	record := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.pods[p.UID] = p.DeepCopy()
		if _, seen := h.ready[p.UID]; seen {
			return
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				h.ready[p.UID] = c.LastTransitionTime.Time
			}
		}
	}
	if _, err := f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    record,
		UpdateFunc: func(_, obj any) { record(obj) },
	}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("the pod informer (%v) did not sync", typ)
		}
	}
	return h, nil
}

func (h *podHistory) last(uid types.UID) (*corev1.Pod, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.pods[uid]
	return p, ok
}

func (h *podHistory) readySince(uid types.UID) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.ready[uid]
	return t, ok
}
