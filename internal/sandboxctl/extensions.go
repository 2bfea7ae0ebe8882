package sandboxctl

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// API names of agent-sandbox's extensions (SandboxTemplate, SandboxWarmPool,
// SandboxClaim), shared with the real controller.
const (
	ExtGroup      = "extensions.agents.x-k8s.io"
	ExtVersion    = "v1beta1"
	ExtAPIVersion = ExtGroup + "/" + ExtVersion

	TemplateKind = "SandboxTemplate"
	WarmPoolKind = "SandboxWarmPool"
	ClaimKind    = "SandboxClaim"

	TemplateRefHashLabel = "agents.x-k8s.io/sandbox-template-ref-hash"
	WarmPoolLabel        = "agents.x-k8s.io/warm-pool-sandbox"
	TemplateHashLabel    = "agents.x-k8s.io/sandbox-template-hash"
	PodTemplateHashLabel = "agents.x-k8s.io/sandbox-pod-template-hash"
	LaunchTypeLabel      = "agents.x-k8s.io/launch-type"
	CreatedByLabel       = "agents.x-k8s.io/created-by"
	ClaimUIDLabel        = "agents.x-k8s.io/claim-uid"

	TemplateRefAnnotation     = "agents.x-k8s.io/sandbox-template-ref"
	SandboxNameAnnotation     = "agents.x-k8s.io/sandbox-name"
	FirstObservedAnnotation   = "agents.x-k8s.io/controller-first-observed-at"
	FirstReadyAnnotation      = "agents.x-k8s.io/claim-first-ready-at"
	SafeToEvictAnnotation     = "cluster-autoscaler.kubernetes.io/safe-to-evict"
	DefaultAllowedLabelDomain = "sandbox.users.io"

	templateController = "sandboxtemplate-controller"
	poolController     = "sandboxwarmpool-controller"
	claimController    = "sandboxclaim-controller"
)

// The extension resources.
var (
	TemplateGVR = schema.GroupVersionResource{Group: ExtGroup, Version: ExtVersion, Resource: "sandboxtemplates"}
	WarmPoolGVR = schema.GroupVersionResource{Group: ExtGroup, Version: ExtVersion, Resource: "sandboxwarmpools"}
	ClaimGVR    = schema.GroupVersionResource{Group: ExtGroup, Version: ExtVersion, Resource: "sandboxclaims"}
)

// Typed views of the extension objects, with the real API's JSON shapes (the
// hashes of the pool's labels are FNV-1a of these types' JSON, as there).
type podMetadata struct {
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type podTemplate struct {
	Spec       corev1.PodSpec `json:"spec"`
	ObjectMeta podMetadata    `json:"metadata"`
}

type embeddedMeta struct {
	Name        string            `json:"name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type pvcTemplate struct {
	embeddedMeta `json:"metadata"`
	Spec         corev1.PersistentVolumeClaimSpec `json:"spec"`
}

type blueprint struct {
	PodTemplate          podTemplate   `json:"podTemplate"`
	VolumeClaimTemplates []pvcTemplate `json:"volumeClaimTemplates,omitempty"`
	Service              *bool         `json:"service,omitempty"`
}

type networkPolicySpec struct {
	Ingress []networkingv1.NetworkPolicyIngressRule `json:"ingress,omitempty"`
	Egress  []networkingv1.NetworkPolicyEgressRule  `json:"egress,omitempty"`
}

type templateSpec struct {
	blueprint
	NetworkPolicy              *networkPolicySpec `json:"networkPolicy,omitempty"`
	NetworkPolicyManagement    string             `json:"networkPolicyManagement,omitempty"`
	EnvVarsInjectionPolicy     string             `json:"envVarsInjectionPolicy,omitempty"`
	VolumeClaimTemplatesPolicy string             `json:"volumeClaimTemplatesPolicy,omitempty"`
}

type poolSpec struct {
	Replicas           *int32 `json:"replicas,omitempty"`
	SandboxTemplateRef struct {
		Name string `json:"name"`
	} `json:"sandboxTemplateRef"`
	UpdateStrategy *struct {
		Type string `json:"type,omitempty"`
	} `json:"updateStrategy,omitempty"`
}

type poolStatus struct {
	Replicas           int32  `json:"replicas,omitempty"`
	ReadyReplicas      int32  `json:"readyReplicas,omitempty"`
	Selector           string `json:"selector,omitempty"`
	ObservedGeneration int64  `json:"observedGeneration,omitempty"`
}

type claimEnv struct {
	Name          string `json:"name"`
	Value         string `json:"value"`
	ContainerName string `json:"containerName,omitempty"`
}

type claimLifecycle struct {
	ShutdownTime            *metav1.Time `json:"shutdownTime,omitempty"`
	ShutdownPolicy          string       `json:"shutdownPolicy,omitempty"`
	TTLSecondsAfterFinished *int32       `json:"ttlSecondsAfterFinished,omitempty"`
}

type claimSpec struct {
	WarmPoolRef struct {
		Name string `json:"name"`
	} `json:"warmPoolRef"`
	AdditionalPodMetadata podMetadata     `json:"additionalPodMetadata"`
	Env                   []claimEnv      `json:"env,omitempty"`
	VolumeClaimTemplates  []pvcTemplate   `json:"volumeClaimTemplates,omitempty"`
	Lifecycle             *claimLifecycle `json:"lifecycle,omitempty"`
}

type claimSandboxStatus struct {
	Name   string   `json:"name,omitempty"`
	PodIPs []string `json:"podIPs,omitempty"`
}

type claimStatus struct {
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	Sandbox    claimSandboxStatus `json:"sandbox"`
}

// fromObject decodes a field of an unstructured object into a typed value.
func fromObject(u *unstructured.Unstructured, out any, fields ...string) error {
	v, ok, err := unstructured.NestedFieldNoCopy(u.Object, fields...)
	if err != nil || !ok || v == nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// toMap encodes a typed value as an unstructured map.
func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

type extKind int

const (
	kindTemplate extKind = iota + 1
	kindPool
	kindClaim
)

func (k extKind) String() string {
	switch k {
	case kindTemplate:
		return TemplateKind
	case kindPool:
		return WarmPoolKind
	case kindClaim:
		return ClaimKind
	}
	return "?"
}

type extKey struct {
	kind      extKind
	namespace string
	name      string
}

// extensions runs the template, warm pool and claim controllers next to
// the Sandbox controller, sharing its Sandbox informer.
type extensions struct {
	c      *Controller
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[extKey]
	events sync.WaitGroup // events being sent

	templates cache.SharedIndexInformer
	pools     cache.SharedIndexInformer
	claims    cache.SharedIndexInformer
	nps       cache.SharedIndexInformer

	mu sync.Mutex
	// fresh holds the objects this controller wrote last, until the
	// informer delivers that version or a newer one: a reconcile never acts
	// on a cache older than its own writes (a claim adopting twice, a pool
	// overfilling).
	fresh map[freshKey]*unstructured.Unstructured
	// reserved maps a warm Sandbox UID to the claim UID adopting it, so two
	// claim workers never race for one member.
	reserved map[types.UID]types.UID
	// creating and deleting are a pool's expectations: members created or
	// deleted whose events the informer has not delivered yet.
	creating map[string]map[string]time.Time // pool key -> Sandbox name
	deleting map[string]map[types.UID]time.Time
	// notProgressing holds the pools holding unschedulable members.
	notProgressing map[string]struct{}
}

type freshKey struct {
	gvr       schema.GroupVersionResource
	namespace string
	name      string
}

// extensionsServed reports whether the API server serves the extensions
// group (their CRDs are installed).
func (c *Controller) extensionsServed() bool {
	rl, err := c.kube.Discovery().ServerResourcesForGroupVersion(ExtAPIVersion)
	if err != nil || rl == nil {
		return false
	}
	want := map[string]bool{"sandboxtemplates": false, "sandboxwarmpools": false, "sandboxclaims": false}
	for _, r := range rl.APIResources {
		if _, ok := want[r.Name]; ok {
			want[r.Name] = true
		}
	}
	for _, ok := range want {
		if !ok {
			return false
		}
	}
	return true
}

// newExtensions sets up the informers (not started) and handlers.
func (c *Controller) newExtensions(dynFactory dynamicinformer.DynamicSharedInformerFactory, kubeFactory informers.SharedInformerFactory) (*extensions, error) {
	e := &extensions{
		c:   c,
		log: c.log.With("controller", "extensions"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[extKey](),
			workqueue.TypedRateLimitingQueueConfig[extKey]{Name: "sandbox-extensions"},
		),
		fresh:          map[freshKey]*unstructured.Unstructured{},
		reserved:       map[types.UID]types.UID{},
		creating:       map[string]map[string]time.Time{},
		deleting:       map[string]map[types.UID]time.Time{},
		notProgressing: map[string]struct{}{},
	}
	e.templates = dynFactory.ForResource(TemplateGVR).Informer()
	e.pools = dynFactory.ForResource(WarmPoolGVR).Informer()
	e.claims = dynFactory.ForResource(ClaimGVR).Informer()
	e.nps = kubeFactory.Networking().V1().NetworkPolicies().Informer()

	add := func(inf cache.SharedIndexInformer, h cache.ResourceEventHandlerFuncs) error {
		_, err := inf.AddEventHandler(h)
		return err
	}
	if err := add(e.templates, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.onTemplate(obj, true) },
		UpdateFunc: func(_, obj any) { e.onTemplate(obj, false) },
		DeleteFunc: func(obj any) { e.onTemplate(obj, false) },
	}); err != nil {
		return nil, err
	}
	if err := add(e.pools, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.onPool(obj, false) },
		UpdateFunc: func(_, obj any) { e.onPool(obj, false) },
		DeleteFunc: func(obj any) { e.onPool(obj, true) },
	}); err != nil {
		return nil, err
	}
	if err := add(e.claims, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.onClaim(obj, false) },
		UpdateFunc: func(_, obj any) { e.onClaim(obj, false) },
		DeleteFunc: func(obj any) { e.onClaim(obj, true) },
	}); err != nil {
		return nil, err
	}
	if err := add(e.nps, cache.ResourceEventHandlerFuncs{
		AddFunc:    e.onNetworkPolicy,
		UpdateFunc: func(_, obj any) { e.onNetworkPolicy(obj) },
		DeleteFunc: e.onNetworkPolicy,
	}); err != nil {
		return nil, err
	}
	if err := add(c.sandboxes, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.onSandbox(nil, obj, false) },
		UpdateFunc: func(old, obj any) { e.onSandbox(old, obj, false) },
		DeleteFunc: func(obj any) { e.onSandbox(nil, obj, true) },
	}); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *extensions) hasSynced() bool {
	return e.templates.HasSynced() && e.pools.HasSynced() && e.claims.HasSynced() && e.nps.HasSynced()
}

func asUnstructured(obj any) *unstructured.Unstructured {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	u, _ := obj.(*unstructured.Unstructured)
	return u
}

func (e *extensions) add(kind extKind, ns, name string) {
	e.queue.Add(extKey{kind: kind, namespace: ns, name: name})
}

// seen drops a fresh entry once the informer has delivered that version or
// a newer one (or the object is gone).
func (e *extensions) seen(gvr schema.GroupVersionResource, u *unstructured.Unstructured, deleted bool) {
	k := freshKey{gvr, u.GetNamespace(), u.GetName()}
	e.mu.Lock()
	defer e.mu.Unlock()
	f, ok := e.fresh[k]
	if !ok {
		return
	}
	if deleted || f.GetUID() != u.GetUID() || rvAtLeast(u.GetResourceVersion(), f.GetResourceVersion()) {
		delete(e.fresh, k)
	}
}

func rvAtLeast(a, b string) bool {
	ai, err1 := strconv.ParseUint(a, 10, 64)
	bi, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return ai >= bi
}

// wrote records an object this controller just wrote.
func (e *extensions) wrote(gvr schema.GroupVersionResource, u *unstructured.Unstructured) {
	if u == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := freshKey{gvr, u.GetNamespace(), u.GetName()}
	if f, ok := e.fresh[k]; ok && f.GetUID() == u.GetUID() && rvAtLeast(f.GetResourceVersion(), u.GetResourceVersion()) {
		return
	}
	e.fresh[k] = u.DeepCopy()
}

// latest returns the newest known version of an object: what this
// controller wrote last, else the informer's copy (nil when absent).
func (e *extensions) latest(inf cache.SharedIndexInformer, gvr schema.GroupVersionResource, ns, name string) *unstructured.Unstructured {
	e.mu.Lock()
	f := e.fresh[freshKey{gvr, ns, name}]
	e.mu.Unlock()
	if f != nil {
		return f.DeepCopy()
	}
	obj, ok, err := inf.GetIndexer().GetByKey(ns + "/" + name)
	if err != nil || !ok {
		return nil
	}
	return obj.(*unstructured.Unstructured).DeepCopy()
}

// newest prefers the fresh copy of a listed object.
func (e *extensions) newest(gvr schema.GroupVersionResource, u *unstructured.Unstructured) *unstructured.Unstructured {
	e.mu.Lock()
	f := e.fresh[freshKey{gvr, u.GetNamespace(), u.GetName()}]
	e.mu.Unlock()
	if f != nil && f.GetUID() == u.GetUID() && rvAtLeast(f.GetResourceVersion(), u.GetResourceVersion()) {
		return f.DeepCopy()
	}
	return u.DeepCopy()
}

func (e *extensions) onTemplate(obj any, added bool) {
	u := asUnstructured(obj)
	if u == nil {
		return
	}
	e.add(kindTemplate, u.GetNamespace(), u.GetName())
	// Pools of this template (their members and status), and claims waiting
	// for it.
	for _, p := range e.list(e.pools, u.GetNamespace()) {
		if ref, _, _ := unstructured.NestedString(p.Object, "spec", "sandboxTemplateRef", "name"); ref == u.GetName() {
			e.add(kindPool, p.GetNamespace(), p.GetName())
			if added {
				e.enqueueWaitingClaims(p.GetNamespace(), p.GetName(), false)
			}
		}
	}
}

func (e *extensions) onPool(obj any, deleted bool) {
	u := asUnstructured(obj)
	if u == nil {
		return
	}
	e.seen(WarmPoolGVR, u, deleted)
	e.add(kindPool, u.GetNamespace(), u.GetName())
	e.enqueueWaitingClaims(u.GetNamespace(), u.GetName(), true)
}

// enqueueWaitingClaims queues the claims of a pool that are not bound yet
// (unbound only, as the real controller's pool watch does, when unbound).
func (e *extensions) enqueueWaitingClaims(ns, pool string, unbound bool) {
	for _, cl := range e.list(e.claims, ns) {
		if ref, _, _ := unstructured.NestedString(cl.Object, "spec", "warmPoolRef", "name"); ref != pool {
			continue
		}
		if name, _, _ := unstructured.NestedString(cl.Object, "status", "sandbox", "name"); unbound && name != "" {
			continue
		}
		e.add(kindClaim, cl.GetNamespace(), cl.GetName())
	}
}

func (e *extensions) onClaim(obj any, deleted bool) {
	u := asUnstructured(obj)
	if u == nil {
		return
	}
	e.seen(ClaimGVR, u, deleted)
	e.add(kindClaim, u.GetNamespace(), u.GetName())
}

func (e *extensions) onNetworkPolicy(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(np); ref != nil && ref.Kind == TemplateKind && refInGroup(ref.APIVersion, ExtGroup) {
		e.add(kindTemplate, np.Namespace, ref.Name)
	}
}

func refInGroup(apiVersion, group string) bool {
	gv, err := schema.ParseGroupVersion(apiVersion)
	return err == nil && gv.Group == group
}

// onSandbox routes a Sandbox event to its pool or claim (and, when the
// controller changed, to the previous one too).
func (e *extensions) onSandbox(oldObj, obj any, deleted bool) {
	u := asUnstructured(obj)
	if u == nil {
		return
	}
	e.seen(GVR, u, deleted)
	ref := metav1.GetControllerOfNoCopy(u)
	e.mu.Lock()
	if deleted || (ref != nil && ref.Kind == ClaimKind) {
		delete(e.reserved, u.GetUID())
	}
	if ref != nil && ref.Kind == WarmPoolKind {
		pk := u.GetNamespace() + "/" + ref.Name
		delete(e.creating[pk], u.GetName())
		if deleted {
			delete(e.deleting[pk], u.GetUID())
		}
	}
	e.mu.Unlock()
	if ref != nil && refInGroup(ref.APIVersion, ExtGroup) {
		switch ref.Kind {
		case WarmPoolKind:
			e.add(kindPool, u.GetNamespace(), ref.Name)
		case ClaimKind:
			e.add(kindClaim, u.GetNamespace(), ref.Name)
		}
	}
	if old := asUnstructured(oldObj); old != nil {
		if oref := metav1.GetControllerOfNoCopy(old); oref != nil && (ref == nil || oref.UID != ref.UID) && refInGroup(oref.APIVersion, ExtGroup) {
			switch oref.Kind {
			case WarmPoolKind:
				e.mu.Lock()
				if deleted {
					delete(e.deleting[u.GetNamespace()+"/"+oref.Name], u.GetUID())
				}
				e.mu.Unlock()
				e.add(kindPool, u.GetNamespace(), oref.Name)
			case ClaimKind:
				e.add(kindClaim, u.GetNamespace(), oref.Name)
			}
		}
	}
}

// list returns the informer's objects of one namespace.
func (e *extensions) list(inf cache.SharedIndexInformer, ns string) []*unstructured.Unstructured {
	objs, err := inf.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
	if err != nil {
		return nil
	}
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	return out
}

func (e *extensions) run(ctx context.Context, workers int, wg *sync.WaitGroup) {
	for range workers {
		wg.Go(func() {
			for e.processNext(ctx) {
			}
		})
	}
}

func (e *extensions) processNext(ctx context.Context) bool {
	key, shutdown := e.queue.Get()
	if shutdown {
		return false
	}
	defer e.queue.Done(key)
	var after time.Duration
	var err error
	switch key.kind {
	case kindTemplate:
		err = e.reconcileTemplate(ctx, key.namespace, key.name)
	case kindPool:
		after, err = e.reconcilePool(ctx, key.namespace, key.name)
	case kindClaim:
		after, err = e.reconcileClaim(ctx, key.namespace, key.name)
	}
	switch {
	case err != nil && ctx.Err() == nil:
		level := slog.LevelInfo
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			level = slog.LevelDebug
		}
		e.log.Log(ctx, level, "reconcile failed, retrying", "kind", key.kind.String(), "object", key.namespace+"/"+key.name, "err", err)
		e.queue.AddRateLimited(key)
	case err == nil:
		e.queue.Forget(key)
		if after > 0 {
			e.queue.AddAfter(key, after)
		}
	}
	return true
}

// event records an events.k8s.io/v1 event about an extension object, as
// the real controllers' recorder does.
func (e *extensions) event(ctx context.Context, u *unstructured.Unstructured, controller, typ, reason, action, note string) {
	now := time.Now()
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", u.GetName(), now.UnixNano()),
			Namespace: u.GetNamespace(),
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: controller,
		ReportingInstance:   controller + "-" + hostname(),
		Action:              action,
		Reason:              reason,
		Regarding: corev1.ObjectReference{
			APIVersion:      u.GetAPIVersion(),
			Kind:            u.GetKind(),
			Namespace:       u.GetNamespace(),
			Name:            u.GetName(),
			UID:             u.GetUID(),
			ResourceVersion: u.GetResourceVersion(),
		},
		Note: note,
		Type: typ,
	}
	// Sent in the background, as the real controllers' event recorder
	// does: a reconcile never waits for its events.
	e.events.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := e.c.kube.EventsV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			e.log.Info("recording an event failed", "object", u.GetNamespace()+"/"+u.GetName(), "reason", reason, "err", err)
		}
	})
}

// controllerRef is a controller ownerReference to u.
func controllerRef(u *unstructured.Unstructured) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         u.GetAPIVersion(),
		Kind:               u.GetKind(),
		Name:               u.GetName(),
		UID:                u.GetUID(),
		Controller:         new(true),
		BlockOwnerDeletion: new(true),
	}
}

// controlledBy reports whether obj's controller ownerReference has uid.
func controlledBy(obj metav1.Object, uid types.UID) bool {
	ref := metav1.GetControllerOfNoCopy(obj)
	return ref != nil && ref.UID == uid
}

func isReady(sb *sandbox) bool {
	for _, c := range sb.status.Conditions {
		if c.Type == "Ready" && c.Status == metav1.ConditionTrue {
			return true
		}
	}
	return false
}

func findCondition(cs []metav1.Condition, t string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}
