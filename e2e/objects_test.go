package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// The resources a run can create, watched cluster-wide by their
// paperclip.io/managed-by label. Cilium policies are left out: the dev
// cluster does not serve cilium.io and the test uses egressMode standard.
var (
	gvrSandbox       = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}
	gvrJob           = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	gvrPod           = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	gvrSecret        = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	gvrNetworkPolicy = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
	gvrNamespace     = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	gvrSA            = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}

	runGVRs = []schema.GroupVersionResource{gvrSandbox, gvrJob, gvrPod, gvrSecret, gvrNetworkPolicy}
)

// seenObject is an object of a run that the recorder saw at least once.
type seenObject struct {
	GVR       schema.GroupVersionResource
	Namespace string
	Name      string
	UID       types.UID
	RunID     string // paperclip.io/run-id
}

func (o seenObject) String() string {
	return fmt.Sprintf("%s %s/%s", o.GVR.Resource, o.Namespace, o.Name)
}

// recorder remembers every object with the provider's managed-by label that
// ever existed while it ran (informers: short-lived pods are seen too), so a
// test can prove that a run's objects existed before it checks that they are
// gone.
type recorder struct {
	mu   sync.Mutex
	objs map[types.UID]seenObject
}

func startRecorder(ctx context.Context, dyn dynamic.Interface) (*recorder, error) {
	r := &recorder{objs: map[types.UID]seenObject{}}
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.LabelSelector = policy.LabelManagedBy + "=" + policy.ManagedByValue
	})
	for _, gvr := range runGVRs {
		add := func(obj any) {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				return
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			r.objs[u.GetUID()] = seenObject{GVR: gvr, Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(), RunID: u.GetLabels()[policy.LabelRunID]}
		}
		if _, err := f.ForResource(gvr).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    add,
			UpdateFunc: func(_, obj any) { add(obj) },
		}); err != nil {
			return nil, err
		}
	}
	f.Start(ctx.Done())
	for gvr, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("the informer of %s did not sync", gvr.Resource)
		}
	}
	return r, nil
}

// byRun returns the objects seen with run-id label runID, sorted.
func (r *recorder) byRun(runID string) []seenObject {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seenObject
	for _, o := range r.objs {
		if o.RunID == runID {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// find returns the seen object of gvr named ns/name.
func (r *recorder) find(gvr schema.GroupVersionResource, ns, name string) (seenObject, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.objs {
		if o.GVR == gvr && o.Namespace == ns && o.Name == name {
			return o, true
		}
	}
	return seenObject{}, false
}

// waitFor polls f until it returns nil or the deadline passes; it returns
// f's last error.
func waitFor(ctx context.Context, d time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leftovers returns the objects labelled with runID that still exist in ns
// (terminating ones included) and the seen objects that still exist with
// their UID.
func leftovers(ctx context.Context, dyn dynamic.Interface, ns, runID string, seen []seenObject) ([]string, error) {
	var left []string
	for _, gvr := range runGVRs {
		l, err := dyn.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: policy.LabelRunID + "=" + runID})
		if err != nil {
			return nil, err
		}
		for _, u := range l.Items {
			left = append(left, fmt.Sprintf("%s %s/%s", gvr.Resource, ns, u.GetName()))
		}
	}
	for _, o := range seen {
		u, err := dyn.Resource(o.GVR).Namespace(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, err
		case u.GetUID() == o.UID && !slices.Contains(left, o.String()):
			left = append(left, o.String())
		}
	}
	sort.Strings(left)
	return left, nil
}

// redact withholds log lines that may carry secrets: execute env and stdin,
// run tokens and signing secrets, kubeconfig credentials (the server logs
// the body of a failed request).
func redact(s string) string {
	markers := []string{"PAPERCLIP_API_KEY", "_SECRET", "_TOKEN", "JWT", `"stdin"`, `"env":{`, `"kubeconfig":"`,
		"client-key-data", "client-certificate-data", "token:", "BEGIN "}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		for _, m := range markers {
			if strings.Contains(l, m) {
				lines[i] = fmt.Sprintf("[line withheld (%d bytes): it may carry secrets]", len(l))
				break
			}
		}
	}
	return strings.Join(lines, "\n")
}

// lockedBuffer is an io.Writer for logs written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return tailLines(b.buf.String(), n)
}

// quiet drops the successful GET request lines (the test polls) from the
// last n lines of a server log tail.
func quiet(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "INFO: GET ") && strings.HasSuffix(strings.TrimSpace(l), " 200") {
			continue
		}
		keep = append(keep, l)
	}
	return tailLines(strings.Join(keep, "\n"), n)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func timed(t *testing.T, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	t.Logf("timing: %s took %v", what, time.Since(start).Round(time.Millisecond))
}
