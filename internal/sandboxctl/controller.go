package sandboxctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// API names shared with the real controller.
const (
	Group      = "agents.x-k8s.io"
	Version    = "v1beta1"
	Kind       = "Sandbox"
	APIVersion = Group + "/" + Version

	NameHashLabel                   = "agents.x-k8s.io/sandbox-name-hash"
	PodNameAnnotation               = "agents.x-k8s.io/pod-name"
	PropagatedLabelsAnnotation      = "agents.x-k8s.io/propagated-labels"
	PropagatedAnnotationsAnnotation = "agents.x-k8s.io/propagated-annotations"

	// FieldManager is the field manager of the controller's writes (and its
	// events' reportingController).
	FieldManager = "sandbox-controller"

	// ReasonMultiplePods is the Ready=False reason (and the Warning event's
	// reason) when more than one pod is controlled by the Sandbox.
	ReasonMultiplePods = "MultiplePods"
)

// GVR is the Sandbox resource.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "sandboxes"}

// reservedPrefixes are label/annotation key prefixes never copied from the
// podTemplate to the pod.
var reservedPrefixes = []string{"agents.x-k8s.io/", "extensions.agents.x-k8s.io/"}

// NameHash is the 32-bit FNV-1a hash of name as 8 lowercase hex digits.
func NameHash(name string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return fmt.Sprintf("%08x", h.Sum32())
}

// Controller reconciles Sandboxes into pods. Create it with New.
type Controller struct {
	dyn   dynamic.Interface
	kube  kubernetes.Interface
	log   *slog.Logger
	now   func() time.Time
	queue workqueue.TypedRateLimitingInterface[string]

	sandboxes cache.SharedIndexInformer
	pods      cache.SharedIndexInformer

	syncedOnce sync.Once
	synced     chan struct{}

	holdMu sync.Mutex
	armed  map[string][]*Hold // armed holds by Sandbox key
	active map[string]*Hold   // the hold a Sandbox is stopped at

	poolGrace, poolRecheck atomic.Int64 // SetWarmPoolTimings
}

// Run runs a controller with a discarding logger until ctx ends.
func Run(ctx context.Context, dyn dynamic.Interface, kube kubernetes.Interface) error {
	return New(dyn, kube, nil).Run(ctx)
}

// New returns a controller. log may be nil.
func New(dyn dynamic.Interface, kube kubernetes.Interface, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{dyn: dyn, kube: kube, log: log, now: time.Now, synced: make(chan struct{})}
}

// Synced is closed once the informer caches are synced and the workers run.
func (c *Controller) Synced() <-chan struct{} { return c.synced }

// Run watches Sandboxes (all namespaces) and the pods carrying
// NameHashLabel, and reconciles until ctx ends. It returns nil on
// cancellation and an error if the caches cannot sync.
func (c *Controller) Run(ctx context.Context) error {
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "sandbox"},
	)
	defer c.queue.ShutDown()

	sbFactory := dynamicinformer.NewDynamicSharedInformerFactory(c.dyn, 0)
	c.sandboxes = sbFactory.ForResource(GVR).Informer()
	podFactory := informers.NewSharedInformerFactoryWithOptions(c.kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = NameHashLabel }))
	c.pods = podFactory.Core().V1().Pods().Informer()

	if _, err := c.sandboxes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
		DeleteFunc: c.enqueue,
	}); err != nil {
		return err
	}
	if _, err := c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueOwner,
		UpdateFunc: func(_, obj any) { c.enqueueOwner(obj) },
		DeleteFunc: c.enqueueOwner,
	}); err != nil {
		return err
	}
	// The extensions (templates, warm pools, claims) when their API is served.
	var ext *extensions
	kubeFactory := informers.NewSharedInformerFactory(c.kube, 0)
	synced := []cache.InformerSynced{c.sandboxes.HasSynced, c.pods.HasSynced}
	if c.extensionsServed() {
		var err error
		if ext, err = c.newExtensions(sbFactory, kubeFactory); err != nil {
			return err
		}
		defer ext.queue.ShutDown()
		synced = append(synced, ext.hasSynced)
	}
	sbFactory.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	kubeFactory.Start(ctx.Done())
	defer sbFactory.Shutdown()
	defer podFactory.Shutdown()
	defer kubeFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("sandboxctl: caches did not sync")
	}
	c.log.Info("sandbox controller started", "extensions", ext != nil)

	// 8 Sandbox workers and 8 for the extensions (the real controller runs
	// 100 Sandbox and 50 claim workers): a pool refill does not hold up the
	// pod patch of an adoption.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	if ext != nil {
		ext.run(ctx, 8, &wg)
	}
	c.syncedOnce.Do(func() { close(c.synced) })
	<-ctx.Done()
	c.queue.ShutDown()
	if ext != nil {
		ext.queue.ShutDown()
	}
	wg.Wait()
	if ext != nil {
		ext.events.Wait()
	}
	return nil
}

func (c *Controller) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err == nil {
		c.queue.Add(key)
	}
}

// enqueueOwner queues the Sandbox that controls a pod.
func (c *Controller) enqueueOwner(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(pod); ref != nil && ref.Kind == Kind && strings.HasPrefix(ref.APIVersion, Group+"/") {
		c.queue.Add(pod.Namespace + "/" + ref.Name)
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.reconcile(ctx, key)
	switch {
	case err != nil && ctx.Err() == nil:
		level := slog.LevelInfo
		if apierrors.IsConflict(err) {
			level = slog.LevelDebug // stale cache; the retry sees the new version
		}
		c.log.Log(ctx, level, "reconcile failed, retrying", "sandbox", key, "err", err)
		c.queue.AddRateLimited(key)
	case err == nil:
		c.queue.Forget(key)
		if after > 0 {
			c.queue.AddAfter(key, after)
		}
	}
	return true
}

// sandbox is the part of a Sandbox the controller reads.
type sandbox struct {
	obj          *unstructured.Unstructured
	labels       map[string]string // spec.podTemplate.metadata.labels
	annotations  map[string]string // spec.podTemplate.metadata.annotations
	podSpec      map[string]any
	shutdownTime *time.Time
	policy       string
	mode         string
	status       sandboxStatus
}

type sandboxStatus struct {
	Conditions  []metav1.Condition `json:"conditions,omitempty"`
	Selector    string             `json:"selector,omitempty"`
	PodIPs      []string           `json:"podIPs,omitempty"`
	NodeName    string             `json:"nodeName,omitempty"`
	Service     string             `json:"service,omitempty"`
	ServiceFQDN string             `json:"serviceFQDN,omitempty"`
}

func parseSandbox(u *unstructured.Unstructured) (*sandbox, error) {
	sb := &sandbox{obj: u}
	sb.labels, _, _ = unstructured.NestedStringMap(u.Object, "spec", "podTemplate", "metadata", "labels")
	sb.annotations, _, _ = unstructured.NestedStringMap(u.Object, "spec", "podTemplate", "metadata", "annotations")
	sb.podSpec, _, _ = unstructured.NestedMap(u.Object, "spec", "podTemplate", "spec")
	sb.policy, _, _ = unstructured.NestedString(u.Object, "spec", "shutdownPolicy")
	sb.mode, _, _ = unstructured.NestedString(u.Object, "spec", "operatingMode")
	if s, ok, _ := unstructured.NestedString(u.Object, "spec", "shutdownTime"); ok && s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return nil, fmt.Errorf("spec.shutdownTime: %w", err)
		}
		sb.shutdownTime = &t
	}
	if st, ok := u.Object["status"]; ok && st != nil {
		b, err := json.Marshal(st)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &sb.status); err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
	}
	return sb, nil
}

// reconcile brings one Sandbox towards its desired state. It returns how
// long to wait before the next reconcile (for shutdownTime), if at all.
func (c *Controller) reconcile(ctx context.Context, key string) (time.Duration, error) {
	if c.held(key) {
		return 0, nil // Release queues it again
	}
	obj, exists, err := c.sandboxes.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return 0, err
	}
	u := obj.(*unstructured.Unstructured).DeepCopy()
	if u.GetDeletionTimestamp() != nil {
		c.log.Debug("Sandbox is being deleted", "sandbox", key)
		return 0, nil
	}
	sb, err := parseSandbox(u)
	if err != nil {
		return 0, c.writeError(ctx, sb, u, err)
	}
	now := c.now()
	if sb.shutdownTime != nil && !now.Before(*sb.shutdownTime) {
		return 0, c.expire(ctx, sb)
	}
	var after time.Duration
	if sb.shutdownTime != nil {
		after = sb.shutdownTime.Sub(now)
	}
	if sb.mode == "Suspended" {
		return after, c.writeError(ctx, sb, u, errors.New("operatingMode Suspended is not supported by the stand-in sandbox controller"))
	}

	pod, created, err := c.ensurePod(ctx, sb, key)
	var multi *multiplePodsError
	switch {
	case errors.Is(err, errHeld):
		return 0, nil
	case errors.As(err, &multi):
		// A stable condition, not an error to retry: a pod event changes it.
		// The event follows the status write that enters the state, so a
		// reconcile from a stale cache (its write conflicts) adds none.
		entering := !hasReadyReason(sb.status, ReasonMultiplePods)
		if err := c.writeStatus(ctx, sb, c.multiplePodsStatus(sb, multi)); err != nil {
			return 0, err
		}
		if entering {
			c.recordMultiplePods(ctx, sb, multi)
		}
		return after, nil
	case err != nil:
		return 0, c.writeError(ctx, sb, u, err)
	}
	if created && len(sb.status.Conditions) > 0 && c.reach(key, NewPod) {
		return 0, nil
	}
	return after, c.writeStatus(ctx, sb, c.liveStatus(sb, pod))
}

// errHeld stops a reconcile at a Hold.
var errHeld = errors.New("held")

// multiplePodsError is the real controller's ownership invariant violation:
// more than one pod is controlled by the Sandbox.
type multiplePodsError struct{ count int }

func (e *multiplePodsError) Error() string {
	return fmt.Sprintf("multiple Pods (%d) are controlled by this Sandbox; refusing to choose or create a Pod", e.count)
}

// ownedPods returns the cached pods that carry the Sandbox's name-hash label
// and are controlled by it (the label finds candidates, the controller UID
// decides).
func (c *Controller) ownedPods(sb *sandbox) ([]*corev1.Pod, error) {
	objs, err := c.pods.GetIndexer().ByIndex(cache.NamespaceIndex, sb.obj.GetNamespace())
	if err != nil {
		return nil, err
	}
	hash := NameHash(sb.obj.GetName())
	var out []*corev1.Pod
	for _, o := range objs {
		p, ok := o.(*corev1.Pod)
		if ok && p.Labels[NameHashLabel] == hash && ownedBy(p, sb) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// findPod returns the pod the Sandbox refers to (annotation, else name)
// from the cache, or nil.
func (c *Controller) findPod(sb *sandbox) (*corev1.Pod, error) {
	obj, ok, err := c.pods.GetIndexer().GetByKey(sb.obj.GetNamespace() + "/" + podName(sb))
	if err != nil || !ok {
		return nil, err
	}
	return obj.(*corev1.Pod), nil
}

// podName is the pod the Sandbox tracks: its pod-name annotation, else its
// own name.
func podName(sb *sandbox) string {
	if a := sb.obj.GetAnnotations()[PodNameAnnotation]; a != "" {
		return a
	}
	return sb.obj.GetName()
}

func ownedBy(pod *corev1.Pod, sb *sandbox) bool {
	ref := metav1.GetControllerOf(pod)
	return ref != nil && ref.UID == sb.obj.GetUID()
}

// ensurePod returns the Sandbox's pod, creating it when missing (created
// reports that), and keeps its propagated metadata and the Sandbox's
// pod-name annotation current. Like the real controller, when the tracked
// pod is gone it first clears the annotation (a write of its own, with the
// status untouched), and it refuses to choose when more than one pod is
// controlled by the Sandbox (a *multiplePodsError).
func (c *Controller) ensurePod(ctx context.Context, sb *sandbox, key string) (pod *corev1.Pod, created bool, err error) {
	ns, name := sb.obj.GetNamespace(), sb.obj.GetName()
	pod, err = c.findPod(sb)
	if err != nil {
		return nil, false, err
	}
	if pod == nil {
		// The cache may not have a pod created a moment ago: ask the API
		// server before concluding that the pod is gone.
		live, err := c.kube.CoreV1().Pods(ns).Get(ctx, podName(sb), metav1.GetOptions{})
		switch {
		case err == nil:
			pod = live
		case !apierrors.IsNotFound(err):
			return nil, false, err
		}
	}
	_, annotated := sb.obj.GetAnnotations()[PodNameAnnotation]
	if pod == nil && annotated {
		c.log.Info("Pod referenced by annotation not found, clearing annotation to recover state", "sandbox", key, "pod", podName(sb))
		if err := c.clearPodNameAnnotation(ctx, sb); err != nil {
			return nil, false, err
		}
		annotated = false
		if c.reach(key, PodGone) {
			return nil, false, errHeld
		}
	}
	owned, err := c.ownedPods(sb)
	if err != nil {
		return nil, false, err
	}
	if pod != nil && ownedBy(pod, sb) && !slices.ContainsFunc(owned, func(p *corev1.Pod) bool { return p.UID == pod.UID }) {
		owned = append(owned, pod)
	}
	if len(owned) > 1 {
		return nil, false, &multiplePodsError{count: len(owned)}
	}
	// The controller UID is authoritative over the annotation.
	if len(owned) == 1 && (pod == nil || pod.Name != owned[0].Name) {
		if annotated {
			if err := c.clearPodNameAnnotation(ctx, sb); err != nil {
				return nil, false, err
			}
		}
		pod = owned[0]
	}
	if pod == nil {
		pod, err = c.createPod(ctx, sb)
		if apierrors.IsAlreadyExists(err) {
			// Not in the cache yet (or not labelled): ask the API server.
			pod, err = c.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		} else if err == nil {
			created = true
		}
		if err != nil {
			return nil, false, err
		}
	}
	if !ownedBy(pod, sb) {
		return nil, false, fmt.Errorf("pod %s/%s exists and is not controlled by Sandbox %s", ns, pod.Name, name)
	}
	if pod.DeletionTimestamp == nil {
		if err := c.syncPodMetadata(ctx, sb, pod); err != nil {
			return nil, false, err
		}
	}
	if sb.obj.GetAnnotations()[PodNameAnnotation] != pod.Name {
		patch := map[string]any{"metadata": map[string]any{"annotations": map[string]any{PodNameAnnotation: pod.Name}}}
		u, err := c.patchSandbox(ctx, sb, patch)
		if err != nil {
			return nil, false, err
		}
		sb.obj = u
	}
	return pod, created, nil
}

func (c *Controller) clearPodNameAnnotation(ctx context.Context, sb *sandbox) error {
	u, err := c.patchSandbox(ctx, sb, map[string]any{"metadata": map[string]any{"annotations": map[string]any{PodNameAnnotation: nil}}})
	if err != nil {
		return fmt.Errorf("clear the %s annotation: %w", PodNameAnnotation, err)
	}
	sb.obj = u
	return nil
}

func (c *Controller) createPod(ctx context.Context, sb *sandbox) (*corev1.Pod, error) {
	var spec corev1.PodSpec
	b, err := json.Marshal(sb.podSpec)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("spec.podTemplate.spec: %w", err)
	}
	labels, annotations := propagated(sb)
	labels[NameHashLabel] = NameHash(sb.obj.GetName())
	maps.Copy(labels, extensionPodLabels(sb))
	if len(annotations) == 0 {
		annotations = nil
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        sb.obj.GetName(),
			Namespace:   sb.obj.GetNamespace(),
			Labels:      labels,
			Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         APIVersion,
				Kind:               Kind,
				Name:               sb.obj.GetName(),
				UID:                sb.obj.GetUID(),
				Controller:         new(true),
				BlockOwnerDeletion: new(true),
			}},
		},
		Spec: spec,
	}
	created, err := c.kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{FieldManager: FieldManager})
	if err == nil {
		c.log.Info("created pod", "sandbox", sb.obj.GetNamespace()+"/"+sb.obj.GetName(), "uid", created.UID)
	}
	return created, err
}

// extensionPodLabelKeys are the agents.x-k8s.io/ labels the real
// controller sets on a pod from the Sandbox's own labels (not its
// podTemplate): the pool and template hashes of a Sandbox controlled by a
// SandboxWarmPool or SandboxClaim, and created-by.
var extensionPodLabelKeys = []string{WarmPoolLabel, TemplateRefHashLabel, CreatedByLabel}

func extensionPodLabels(sb *sandbox) map[string]string {
	out := map[string]string{}
	labels := sb.obj.GetLabels()
	if ref := metav1.GetControllerOfNoCopy(sb.obj); ref != nil && refInGroup(ref.APIVersion, ExtGroup) {
		if v := labels[WarmPoolLabel]; v != "" && ref.Kind == WarmPoolKind {
			out[WarmPoolLabel] = v
		}
		if v := labels[TemplateRefHashLabel]; v != "" {
			out[TemplateRefHashLabel] = v
		}
	}
	if v := labels[CreatedByLabel]; v != "" {
		out[CreatedByLabel] = v
	}
	return out
}

func filtered(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !slices.ContainsFunc(reservedPrefixes, func(p string) bool { return strings.HasPrefix(k, p) }) {
			out[k] = v
		}
	}
	return out
}

// propagated returns the pod labels and annotations the podTemplate asks
// for, with the bookkeeping annotations.
func propagated(sb *sandbox) (labels, annotations map[string]string) {
	labels, annotations = filtered(sb.labels), filtered(sb.annotations)
	lk, ak := sortedKeys(labels), sortedKeys(annotations)
	if len(lk) > 0 {
		annotations[PropagatedLabelsAnnotation] = strings.Join(lk, ",")
	}
	if len(ak) > 0 {
		annotations[PropagatedAnnotationsAnnotation] = strings.Join(ak, ",")
	}
	return labels, annotations
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// syncPodMetadata patches the podTemplate's labels/annotations onto an
// existing pod: new and changed keys are set, previously propagated keys no
// longer in the template are removed.
func (c *Controller) syncPodMetadata(ctx context.Context, sb *sandbox, pod *corev1.Pod) error {
	wantL, wantA := propagated(sb)
	wantL[NameHashLabel] = NameHash(sb.obj.GetName())
	maps.Copy(wantL, extensionPodLabels(sb))
	diff := func(have, want map[string]string, prevKeys string) map[string]any {
		out := map[string]any{}
		for k, v := range want {
			if hv, ok := have[k]; !ok || hv != v {
				out[k] = v
			}
		}
		for k := range strings.SplitSeq(prevKeys, ",") {
			if _, ok := want[k]; k != "" && !ok {
				if _, ok := have[k]; ok {
					out[k] = nil
				}
			}
		}
		return out
	}
	dl := diff(pod.Labels, wantL, pod.Annotations[PropagatedLabelsAnnotation])
	for _, k := range extensionPodLabelKeys {
		if _, want := wantL[k]; !want {
			if _, have := pod.Labels[k]; have {
				dl[k] = nil
			}
		}
	}
	da := diff(pod.Annotations, wantA, pod.Annotations[PropagatedAnnotationsAnnotation])
	for _, k := range []string{PropagatedLabelsAnnotation, PropagatedAnnotationsAnnotation} {
		if _, want := wantA[k]; !want {
			if _, have := pod.Annotations[k]; have {
				da[k] = nil
			}
		}
	}
	if len(dl) == 0 && len(da) == 0 {
		return nil
	}
	meta := map[string]any{}
	if len(dl) > 0 {
		meta["labels"] = dl
	}
	if len(da) > 0 {
		meta["annotations"] = da
	}
	b, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	_, err = c.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: FieldManager})
	return err
}

// liveStatus computes the status of a live (not expired) Sandbox.
func (c *Controller) liveStatus(sb *sandbox, pod *corev1.Pod) sandboxStatus {
	st := sandboxStatus{
		Selector:    NameHashLabel + "=" + NameHash(sb.obj.GetName()),
		Service:     sb.status.Service,
		ServiceFQDN: sb.status.ServiceFQDN,
	}
	cs := &conds{prev: sb.status.Conditions, gen: sb.obj.GetGeneration(), now: c.now()}
	cs.set("Suspended", metav1.ConditionFalse, "NotSuspended", "Sandbox is not suspended")

	var sched *corev1.PodCondition
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == corev1.PodScheduled {
			sched = &pod.Status.Conditions[i]
		}
	}
	if sched == nil {
		cs.set("PodScheduled", metav1.ConditionUnknown, "PodSchedulingUnknown", "Pod has not reported a PodScheduled condition yet")
	} else {
		reason := sched.Reason
		if reason == "" {
			reason = "PodScheduled"
		}
		cs.set("PodScheduled", metav1.ConditionStatus(sched.Status), reason, sched.Message)
	}

	for _, ip := range pod.Status.PodIPs {
		st.PodIPs = append(st.PodIPs, ip.IP)
	}
	if len(st.PodIPs) == 0 && pod.Status.PodIP != "" {
		st.PodIPs = []string{pod.Status.PodIP}
	}
	st.NodeName = pod.Spec.NodeName
	ready := false
	for _, pc := range pod.Status.Conditions {
		if pc.Type == corev1.PodReady && pc.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	switch {
	case pod.Status.Phase == corev1.PodFailed:
		cs.set("Ready", metav1.ConditionFalse, "PodFailed", "Pod failed")
		cs.set("Finished", metav1.ConditionTrue, "PodFailed", "Pod failed")
	case pod.Status.Phase == corev1.PodSucceeded:
		cs.set("Ready", metav1.ConditionFalse, "PodSucceeded", "Pod completed successfully")
		cs.set("Finished", metav1.ConditionTrue, "PodSucceeded", "Pod completed successfully")
	case pod.Status.Phase == corev1.PodRunning && ready && len(st.PodIPs) > 0:
		cs.set("Ready", metav1.ConditionTrue, "DependenciesReady", "Pod is Ready")
	case pod.Status.Phase == corev1.PodRunning && ready:
		cs.set("Ready", metav1.ConditionFalse, "DependenciesNotReady", "Pod is Ready but has no podIPs yet")
	case pod.Status.Phase == corev1.PodRunning:
		cs.set("Ready", metav1.ConditionFalse, "DependenciesNotReady", "Pod is Running but not Ready")
	default:
		phase := pod.Status.Phase
		if phase == "" {
			phase = corev1.PodPending
		}
		cs.set("Ready", metav1.ConditionFalse, "DependenciesNotReady", "Pod exists with phase: "+string(phase))
	}
	st.Conditions = cs.out
	return st
}

// multiplePodsStatus is the real controller's status while more than one
// pod is controlled by the Sandbox: no pod is chosen, so the pod fields are
// cleared (the selector stays) and PodScheduled is unknown.
func (c *Controller) multiplePodsStatus(sb *sandbox, e *multiplePodsError) sandboxStatus {
	st := sandboxStatus{Selector: sb.status.Selector, Service: sb.status.Service, ServiceFQDN: sb.status.ServiceFQDN}
	cs := &conds{prev: sb.status.Conditions, gen: sb.obj.GetGeneration(), now: c.now()}
	cs.set("Suspended", metav1.ConditionFalse, "NotSuspended", "Sandbox is not suspended")
	cs.set("PodScheduled", metav1.ConditionUnknown, "PodSchedulingUnknown", "Pod state is unknown. Pod scheduling cannot be determined")
	cs.set("Ready", metav1.ConditionFalse, ReasonMultiplePods, e.Error())
	st.Conditions = cs.out
	return st
}

func hasReadyReason(st sandboxStatus, reason string) bool {
	for _, pc := range st.Conditions {
		if pc.Type == "Ready" && pc.Reason == reason {
			return true
		}
	}
	return false
}

// recordMultiplePods emits the real controller's Warning event
// (events.k8s.io/v1, reason MultiplePods, action Reconciling), once per
// entry into the state.
func (c *Controller) recordMultiplePods(ctx context.Context, sb *sandbox, e *multiplePodsError) {
	now := c.now()
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", sb.obj.GetName(), now.UnixNano()),
			Namespace: sb.obj.GetNamespace(),
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: FieldManager,
		ReportingInstance:   FieldManager + "-" + hostname(),
		Action:              "Reconciling",
		Reason:              ReasonMultiplePods,
		Regarding: corev1.ObjectReference{
			APIVersion:      APIVersion,
			Kind:            Kind,
			Namespace:       sb.obj.GetNamespace(),
			Name:            sb.obj.GetName(),
			UID:             sb.obj.GetUID(),
			ResourceVersion: sb.obj.GetResourceVersion(),
		},
		Note: e.Error(),
		Type: corev1.EventTypeWarning,
	}
	if _, err := c.kube.EventsV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Info("recording the MultiplePods event failed", "sandbox", sb.obj.GetNamespace()+"/"+sb.obj.GetName(), "err", err)
	}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// expire handles a Sandbox whose shutdownTime has passed.
func (c *Controller) expire(ctx context.Context, sb *sandbox) error {
	key := sb.obj.GetNamespace() + "/" + sb.obj.GetName()
	// 1. Ready=False/SandboxExpired, PodScheduled dropped, the rest kept.
	cs := &conds{prev: sb.status.Conditions, gen: sb.obj.GetGeneration(), now: c.now()}
	for _, pc := range sb.status.Conditions {
		switch pc.Type {
		case "PodScheduled":
		case "Ready":
			cs.set("Ready", metav1.ConditionFalse, "SandboxExpired", "Sandbox has expired")
		default:
			cs.set(pc.Type, pc.Status, pc.Reason, pc.Message)
		}
	}
	if cs.find("Ready") == nil {
		cs.set("Ready", metav1.ConditionFalse, "SandboxExpired", "Sandbox has expired")
	}
	st := sb.status
	st.Conditions = cs.out
	if err := c.writeStatus(ctx, sb, st); err != nil {
		return err
	}
	// 2. Delete the pod, if the Sandbox owns one.
	pod, err := c.findPod(sb)
	if err != nil {
		return err
	}
	if pod != nil && ownedBy(pod, sb) && pod.DeletionTimestamp == nil {
		err := c.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		c.log.Info("expired: deleted pod", "sandbox", key)
	}
	// 3. Delete the Sandbox, or keep it with only its conditions.
	if sb.policy == "Delete" {
		uid := sb.obj.GetUID()
		err := c.dyn.Resource(GVR).Namespace(sb.obj.GetNamespace()).Delete(ctx, sb.obj.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		c.log.Info("expired: deleted Sandbox", "sandbox", key)
		return nil
	}
	return c.writeStatus(ctx, sb, sandboxStatus{Conditions: st.Conditions})
}

// writeError reports a reconcile error as Ready=False/ReconcilerError and
// returns err so that the key is retried.
func (c *Controller) writeError(ctx context.Context, sb *sandbox, u *unstructured.Unstructured, err error) error {
	if sb == nil {
		sb = &sandbox{obj: u}
	}
	st := sb.status
	cs := &conds{prev: st.Conditions, gen: u.GetGeneration(), now: c.now()}
	for _, pc := range st.Conditions {
		if pc.Type != "Ready" {
			cs.set(pc.Type, pc.Status, pc.Reason, pc.Message)
		}
	}
	cs.set("Ready", metav1.ConditionFalse, "ReconcilerError", "Error seen: "+err.Error())
	st.Conditions = cs.out
	if werr := c.writeStatus(ctx, sb, st); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}

// writeStatus merge-patches /status when st differs from the cached status.
// The patch carries the cached resourceVersion, so it fails with a conflict
// (and is retried) if the cache was stale.
func (c *Controller) writeStatus(ctx context.Context, sb *sandbox, st sandboxStatus) error {
	if statusEqual(sb.status, st) {
		return nil
	}
	status := map[string]any{
		"conditions":  nil,
		"selector":    nil,
		"podIPs":      nil,
		"nodeName":    nil,
		"service":     nil,
		"serviceFQDN": nil,
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	var set map[string]any
	if err := json.Unmarshal(b, &set); err != nil {
		return err
	}
	for k, v := range set {
		status[k] = v
	}
	patch := map[string]any{
		"metadata": map[string]any{"resourceVersion": sb.obj.GetResourceVersion()},
		"status":   status,
	}
	pb, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	u, err := c.dyn.Resource(GVR).Namespace(sb.obj.GetNamespace()).Patch(ctx, sb.obj.GetName(), types.MergePatchType, pb, metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil {
		return fmt.Errorf("patch status: %w", err)
	}
	sb.obj = u
	sb.status = st
	return nil
}

func (c *Controller) patchSandbox(ctx context.Context, sb *sandbox, patch map[string]any) (*unstructured.Unstructured, error) {
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, err
	}
	return c.dyn.Resource(GVR).Namespace(sb.obj.GetNamespace()).Patch(ctx, sb.obj.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: FieldManager})
}
