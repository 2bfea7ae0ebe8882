package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/paperclip-k8s/paperclip-k8s/internal/devenv"
)

var (
	gvrSandbox       = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}
	gvrJob           = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	gvrNetworkPolicy = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
)

// lease is the host's PluginEnvironmentLease.
type lease struct {
	ProviderLeaseID *string        `json:"providerLeaseId"`
	Metadata        map[string]any `json:"metadata,omitempty"`
	ExpiresAt       *string        `json:"expiresAt,omitempty"`
}

func (l lease) id() string {
	if l.ProviderLeaseID == nil {
		return ""
	}
	return *l.ProviderLeaseID
}

func (l lease) meta(key string) string {
	s, _ := l.Metadata[key].(string)
	return s
}

type executeResult struct {
	ExitCode *int           `json:"exitCode"`
	Signal   *string        `json:"signal"`
	TimedOut bool           `json:"timedOut"`
	Stdout   string         `json:"stdout"`
	Stderr   string         `json:"stderr"`
	Metadata map[string]any `json:"metadata"`
}

func (r executeResult) code() int {
	if r.ExitCode == nil {
		return -1
	}
	return *r.ExitCode
}

// hooks drives one worker against the shared control plane for one company.
type hooks struct {
	t       testing.TB
	env     *devenv.Env
	w       *proc
	company string
	config  map[string]any
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newHooks starts a worker (initialized) and a config for backend with the
// admin kubeconfig; extra keys are merged into the config. The tenant
// namespace is deleted at cleanup.
func newHooks(t testing.TB, backend string, extra map[string]any, opts ...workerOpts) *hooks {
	t.Helper()
	env := requireEnv(t)
	cfg := map[string]any{"kubeconfig": string(env.KubeconfigBytes()), "backend": backend}
	maps.Copy(cfg, extra)
	h := &hooks{t: t, env: env, company: "co-" + randHex(4), config: cfg}
	h.w = startWorker(t, opts...)
	h.w.initialize()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = env.Kube().CoreV1().Namespaces().Delete(ctx, h.namespace(), metav1.DeleteOptions{})
	})
	return h
}

// namespace is the tenant namespace of the company (default prefix).
func (h *hooks) namespace() string { return "paperclip-" + h.company }

func (h *hooks) base() map[string]any {
	return map[string]any{"driverKey": "kubernetes", "companyId": h.company, "environmentId": "env-" + h.company, "config": h.config}
}

func (h *hooks) with(extra map[string]any) map[string]any {
	p := h.base()
	maps.Copy(p, extra)
	return p
}

func (h *hooks) acquireParams(extra map[string]any) map[string]any {
	p := h.with(map[string]any{
		"runId": "run-" + randHex(4), "agentId": "agent-1", "adapterType": "claude_local",
		"workspaceMode": "isolated_workspace", "executionWorkspaceId": nil,
	})
	maps.Copy(p, extra)
	return p
}

// acquire acquires a lease (whatever the test leaves behind goes with the
// tenant namespace at cleanup).
func (h *hooks) acquire(extra map[string]any) lease {
	h.t.Helper()
	var l lease
	h.w.mustCall("environmentAcquireLease", h.acquireParams(extra), &l)
	if l.id() == "" {
		h.t.Fatalf("acquire returned no providerLeaseId: %+v", l)
	}
	return l
}

func (h *hooks) leaseParams(l lease) map[string]any {
	return h.with(map[string]any{"providerLeaseId": l.ProviderLeaseID, "leaseMetadata": l.Metadata})
}

func (h *hooks) execParams(l lease, command string, extra map[string]any) map[string]any {
	p := h.with(map[string]any{"lease": l, "command": command, "timeoutMs": 60000})
	maps.Copy(p, extra)
	return p
}

// exec runs a command and returns the result; an RPC error fails the test.
func (h *hooks) exec(l lease, command string, extra map[string]any) executeResult {
	h.t.Helper()
	var r executeResult
	h.w.mustCall("environmentExecute", h.execParams(l, command, extra), &r)
	return r
}

func (h *hooks) kube() kubernetes.Interface { return h.env.Kube() }
func (h *hooks) dyn() dynamic.Interface     { return h.env.Dynamic() }

// eventually polls f every 100 ms until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// gone reports nil when get says NotFound.
func gone(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("still there")
}

// podsOf lists the pods of a run (by the provider's run label).
func (h *hooks) podsOf(ctx context.Context, ns, leaseID string) ([]corev1.Pod, error) {
	l, err := h.kube().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if strings.HasPrefix(p.Name, leaseID) || p.Labels["job-name"] == leaseID {
			out = append(out, p)
			continue
		}
		for _, o := range p.OwnerReferences {
			if o.Name == leaseID {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// waitRunGone waits until the lease's workload, pods, Secret and scoped
// NetworkPolicy are all gone.
func (h *hooks) waitRunGone(l lease, d time.Duration) {
	h.t.Helper()
	ctx := context.Background()
	ns, id := l.meta("namespace"), l.id()
	gvr := gvrSandbox
	if l.meta("backend") == "job" {
		gvr = gvrJob
	}
	eventually(h.t, d, "the workload, its pods, Secret and NetworkPolicy are deleted", func() error {
		if _, err := h.dyn().Resource(gvr).Namespace(ns).Get(ctx, id, metav1.GetOptions{}); gone(err) != nil {
			return fmt.Errorf("workload %s: %v", id, gone(err))
		}
		if _, err := h.kube().CoreV1().Secrets(ns).Get(ctx, id+"-env", metav1.GetOptions{}); gone(err) != nil {
			return fmt.Errorf("secret: %v", gone(err))
		}
		if _, err := h.dyn().Resource(gvrNetworkPolicy).Namespace(ns).Get(ctx, id+"-egress", metav1.GetOptions{}); gone(err) != nil {
			return fmt.Errorf("scoped network policy: %v", gone(err))
		}
		pods, err := h.podsOf(ctx, ns, id)
		if err != nil {
			return err
		}
		if len(pods) > 0 {
			return fmt.Errorf("%d pods left (%s)", len(pods), pods[0].Name)
		}
		return nil
	})
}

// waitPod waits for the run's pod to be Running and Ready and returns it.
func (h *hooks) waitPod(l lease, notUID string) corev1.Pod {
	h.t.Helper()
	var pod corev1.Pod
	eventually(h.t, 60*time.Second, "the run's pod is Ready", func() error {
		pods, err := h.podsOf(context.Background(), l.meta("namespace"), l.id())
		if err != nil {
			return err
		}
		for _, p := range pods {
			if string(p.UID) == notUID || p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					pod = p
					return nil
				}
			}
		}
		return fmt.Errorf("%d pods, none ready", len(pods))
	})
	return pod
}
