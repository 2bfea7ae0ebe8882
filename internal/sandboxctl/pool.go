package sandboxctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// expectationTimeout bounds how long a pool waits for the informer to show
// a member it created or deleted before it counts from the cache alone.
const expectationTimeout = 30 * time.Second

// The real controller's defaults for stuck members
// (--sandbox-warm-pool-readiness-grace-period and
// --sandbox-warm-pool-unschedulable-recheck-interval), and the slack added
// to the post-grace requeue.
const (
	DefaultWarmPoolReadinessGrace       = 5 * time.Minute
	DefaultUnschedulableRecheckInterval = time.Minute
	graceRequeueSlack                   = 2 * time.Second
)

// SetWarmPoolTimings sets how long a warm pool member may stay not Ready
// before it is replaced (or held, when its pod is unschedulable) and how
// often a pool holding unschedulable members is checked again; zero
// restores the real controller's defaults (5m, 1m). Tests shorten them, as
// the research run did (10 s).
func (c *Controller) SetWarmPoolTimings(grace, recheck time.Duration) {
	c.poolGrace.Store(int64(grace))
	c.poolRecheck.Store(int64(recheck))
}

func (c *Controller) warmPoolTimings() (grace, recheck time.Duration) {
	grace, recheck = time.Duration(c.poolGrace.Load()), time.Duration(c.poolRecheck.Load())
	if grace <= 0 {
		grace = DefaultWarmPoolReadinessGrace
	}
	if recheck <= 0 {
		recheck = DefaultUnschedulableRecheckInterval
	}
	return grace, recheck
}

// podUnschedulable reports whether the member's pod is not deleting and
// the scheduler found no node for it.
func (e *extensions) podUnschedulable(sb *sandbox) bool {
	obj, ok, _ := e.c.pods.GetIndexer().GetByKey(sb.obj.GetNamespace() + "/" + podName(sb))
	if !ok {
		return false
	}
	pod := obj.(*corev1.Pod)
	if pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
		}
	}
	return false
}

// PoolSelector is a pool's status.selector.
func PoolSelector(pool string) string { return WarmPoolLabel + "=" + NameHash(pool) }

// poolMembers returns the Sandboxes a pool controls and is not deleting,
// oldest first, and how many it is deleting.
func (e *extensions) poolMembers(pool *unstructured.Unstructured) (active []*sandbox, terminating int) {
	hash := NameHash(pool.GetName())
	pk := pool.GetNamespace() + "/" + pool.GetName()
	for _, u := range e.list(e.c.sandboxes, pool.GetNamespace()) {
		u = e.newest(GVR, u)
		if u.GetLabels()[WarmPoolLabel] != hash || !controlledBy(u, pool.GetUID()) {
			continue
		}
		e.mu.Lock()
		_, deleting := e.deleting[pk][u.GetUID()]
		e.mu.Unlock()
		if u.GetDeletionTimestamp() != nil || deleting {
			terminating++
			continue
		}
		sb, err := parseSandbox(u)
		if err != nil {
			continue
		}
		active = append(active, sb)
	}
	slices.SortFunc(active, func(a, b *sandbox) int {
		if c := a.obj.GetCreationTimestamp().Compare(b.obj.GetCreationTimestamp().Time); c != 0 {
			return c
		}
		return compareStrings(a.obj.GetName(), b.obj.GetName())
	})
	return active, terminating
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pending counts a pool's creates not yet seen, dropping expired ones.
func (e *extensions) pending(pk string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	for name, t := range e.creating[pk] {
		if now.Sub(t) > expectationTimeout {
			delete(e.creating[pk], name)
		}
	}
	for uid, t := range e.deleting[pk] {
		if now.Sub(t) > expectationTimeout {
			delete(e.deleting[pk], uid)
		}
	}
	return len(e.creating[pk])
}

// reconcilePool keeps spec.replicas warm members of the pool's template,
// replaces stale ones under the Recreate strategy, and writes the status.
func (e *extensions) reconcilePool(ctx context.Context, ns, name string) (time.Duration, error) {
	pool := e.latest(e.pools, WarmPoolGVR, ns, name)
	pk := ns + "/" + name
	if pool == nil || pool.GetDeletionTimestamp() != nil {
		e.mu.Lock()
		delete(e.creating, pk)
		delete(e.deleting, pk)
		delete(e.notProgressing, pk)
		e.mu.Unlock()
		return 0, nil // members go with it (garbage collector)
	}
	var spec poolSpec
	if err := fromObject(pool, &spec, "spec"); err != nil {
		return 0, fmt.Errorf("SandboxWarmPool %s spec: %w", pk, err)
	}
	replicas := int32(1)
	if spec.Replicas != nil {
		replicas = *spec.Replicas
	}
	tmplName := spec.SandboxTemplateRef.Name
	var ts *templateSpec
	var podHash, bpHash string
	if tu := e.latest(e.templates, TemplateGVR, ns, tmplName); tu != nil && tu.GetDeletionTimestamp() == nil {
		var err error
		if ts, err = parseTemplate(tu); err != nil {
			return 0, err
		}
		if podHash, bpHash, err = templateHashes(ts); err != nil {
			return 0, err
		}
	} else {
		e.log.Info("Failed to get sandbox template and hash", "pool", pk, "templateRef", tmplName)
	}

	active, terminating := e.poolMembers(pool)
	var errs error
	// Recreate: unclaimed members built from an older template are replaced.
	if ts != nil && spec.UpdateStrategy != nil && spec.UpdateStrategy.Type == "Recreate" {
		kept := active[:0]
		for _, sb := range active {
			if !memberStale(sb, tmplName, ts, bpHash) {
				kept = append(kept, sb)
				continue
			}
			if err := e.deleteMember(ctx, pk, sb); err != nil {
				errs = errors.Join(errs, err)
				kept = append(kept, sb)
				continue
			}
			terminating++
		}
		active = kept
	}

	// Members not Ready past the readiness grace are replaced, unless their
	// pod is unschedulable (a replacement would be too): those are held and
	// the pool gets a WarmPoolNotProgressing event.
	grace, recheck := e.c.warmPoolTimings()
	now := time.Now()
	var after time.Duration
	unschedulable := 0
	healthy := active[:0]
	for _, sb := range active {
		age := now.Sub(sb.obj.GetCreationTimestamp().Time)
		switch {
		case isReady(sb):
		case age <= grace:
			after = minNonZero(after, grace-age+graceRequeueSlack)
		case e.podUnschedulable(sb):
			unschedulable++
		default:
			e.log.Info("Deleting stuck warm pool sandbox", "sandbox", sb.obj.GetName(), "age", age.Round(time.Second))
			if err := e.deleteMember(ctx, pk, sb); err != nil {
				errs = errors.Join(errs, err)
				healthy = append(healthy, sb)
				continue
			}
			terminating++
			continue
		}
		healthy = append(healthy, sb)
	}
	active = healthy
	e.setNotProgressing(ctx, pool, unschedulable > 0, fmt.Sprintf(
		"%d/%d sandboxes are unschedulable past the %s readiness grace period; holding them instead of replacing (replacements would be equally unschedulable)",
		unschedulable, replicas, grace))
	if unschedulable > 0 {
		after = minNonZero(after, recheck)
	}

	st := poolStatus{Replicas: int32(len(active)), Selector: PoolSelector(name), ObservedGeneration: pool.GetGeneration()}
	for _, sb := range active {
		if isReady(sb) {
			st.ReadyReplicas++
		}
	}
	if err := e.writePoolStatus(ctx, pool, st); err != nil {
		errs = errors.Join(errs, err)
	}

	pending := e.pending(pk)
	total := len(active) + terminating + pending
	switch {
	case ts != nil && total < int(replicas):
		member, err := e.buildMember(pool, tmplName, ts, podHash, bpHash)
		if err != nil {
			return 0, errors.Join(errs, err)
		}
		errs = errors.Join(errs, e.createMembers(ctx, pk, member, int(replicas)-total))
	case len(active) > int(replicas) && pending == 0:
		// Not-Ready members first, then the newest.
		victims := slices.Clone(active)
		slices.SortStableFunc(victims, func(a, b *sandbox) int {
			if ra, rb := isReady(a), isReady(b); ra != rb {
				if ra {
					return 1
				}
				return -1
			}
			return b.obj.GetCreationTimestamp().Compare(a.obj.GetCreationTimestamp().Time)
		})
		for _, sb := range victims[:len(active)-int(replicas)] {
			errs = errors.Join(errs, e.deleteMember(ctx, pk, sb))
		}
	}
	return after, errs
}

func minNonZero(a, b time.Duration) time.Duration {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

// setNotProgressing records the pool's entry into (a Warning
// WarmPoolNotProgressing event) and exit from (a Normal WarmPoolProgressing
// event) holding unschedulable members.
func (e *extensions) setNotProgressing(ctx context.Context, pool *unstructured.Unstructured, held bool, msg string) {
	pk := pool.GetNamespace() + "/" + pool.GetName()
	e.mu.Lock()
	_, was := e.notProgressing[pk]
	if held == was {
		e.mu.Unlock()
		return
	}
	if held {
		e.notProgressing[pk] = struct{}{}
	} else {
		delete(e.notProgressing, pk)
	}
	e.mu.Unlock()
	if held {
		e.event(ctx, pool, poolController, corev1.EventTypeWarning, "WarmPoolNotProgressing", "Reconciling", msg)
	} else {
		e.event(ctx, pool, poolController, corev1.EventTypeNormal, "WarmPoolProgressing", "Reconciling", "Warm pool is progressing again")
	}
}

// memberStale is the real controller's isSandboxStale: a member of
// another template, or whose blueprint hash differs and whose pod spec
// (with the secure defaults), volume claim templates (name and spec) or
// service differ from the template's. A metadata-only change is not stale.
func memberStale(sb *sandbox, tmplName string, ts *templateSpec, bpHash string) bool {
	labels := sb.obj.GetLabels()
	if labels[TemplateRefHashLabel] != NameHash(tmplName) {
		return true
	}
	if h := labels[TemplateHashLabel]; h != "" && h == bpHash {
		return false
	}
	var have blueprint
	if err := fromObject(sb.obj, &have, "spec"); err != nil {
		return true
	}
	var want corev1.PodSpec
	if err := deepCopyJSON(ts.PodTemplate.Spec, &want); err != nil {
		return true
	}
	applySecureDefaults(ts, &want)
	if !equality.Semantic.DeepEqual(want, have.PodTemplate.Spec) || !equality.Semantic.DeepEqual(ts.Service, have.Service) {
		return true
	}
	if len(ts.VolumeClaimTemplates) != len(have.VolumeClaimTemplates) {
		return true
	}
	for i, v := range ts.VolumeClaimTemplates {
		if v.Name != have.VolumeClaimTemplates[i].Name || !equality.Semantic.DeepEqual(v.Spec, have.VolumeClaimTemplates[i].Spec) {
			return true
		}
	}
	return false
}

func (e *extensions) deleteMember(ctx context.Context, pk string, sb *sandbox) error {
	uid := sb.obj.GetUID()
	e.mu.Lock()
	if e.deleting[pk] == nil {
		e.deleting[pk] = map[types.UID]time.Time{}
	}
	e.deleting[pk][uid] = time.Now()
	e.mu.Unlock()
	err := e.c.dyn.Resource(GVR).Namespace(sb.obj.GetNamespace()).Delete(ctx, sb.obj.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil {
		e.mu.Lock()
		delete(e.deleting[pk], uid)
		e.mu.Unlock()
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return fmt.Errorf("delete warm pool Sandbox %s/%s: %w", sb.obj.GetNamespace(), sb.obj.GetName(), err)
	}
	return nil
}

// createMembers creates n copies of member in slow-start batches (1, 2,
// 4, ...), stopping at the first batch with an error.
func (e *extensions) createMembers(ctx context.Context, pk string, member *unstructured.Unstructured, n int) error {
	e.log.Info("Creating new pool sandboxes", "pool", pk, "count", n)
	for batch := 1; n > 0; batch *= 2 {
		size := min(batch, n)
		n -= size
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs error
		for range size {
			wg.Go(func() {
				out, err := e.c.dyn.Resource(GVR).Namespace(member.GetNamespace()).Create(ctx, member.DeepCopy(), metav1.CreateOptions{FieldManager: poolController})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = errors.Join(errs, fmt.Errorf("create a Sandbox for SandboxWarmPool %s: %w", pk, err))
					return
				}
				e.mu.Lock()
				if e.creating[pk] == nil {
					e.creating[pk] = map[string]time.Time{}
				}
				// Not yet seen by the informer (an ADDED event may already have
				// come and gone: check).
				if _, ok, _ := e.c.sandboxes.GetIndexer().GetByKey(out.GetNamespace() + "/" + out.GetName()); !ok {
					e.creating[pk][out.GetName()] = time.Now()
				}
				e.mu.Unlock()
			})
		}
		wg.Wait()
		if errs != nil {
			return errs
		}
	}
	return nil
}

// buildMember is the real controller's pool Sandbox: generateName
// "<pool>-", the template's blueprint with the pool's labels, the
// safe-to-evict annotation and the secure defaults, controlled by the pool.
func (e *extensions) buildMember(pool *unstructured.Unstructured, tmplName string, ts *templateSpec, podHash, bpHash string) (*unstructured.Unstructured, error) {
	bp := blueprint{}
	if err := deepCopyJSON(ts.blueprint, &bp); err != nil {
		return nil, err
	}
	poolHash, refHash := NameHash(pool.GetName()), NameHash(tmplName)
	meta := &bp.PodTemplate.ObjectMeta
	if meta.Labels == nil {
		meta.Labels = map[string]string{}
	}
	maps.Copy(meta.Labels, map[string]string{
		WarmPoolLabel: poolHash, TemplateRefHashLabel: refHash, PodTemplateHashLabel: podHash, TemplateHashLabel: bpHash,
	})
	if _, ok := meta.Annotations[SafeToEvictAnnotation]; !ok {
		if meta.Annotations == nil {
			meta.Annotations = map[string]string{}
		}
		meta.Annotations[SafeToEvictAnnotation] = "true"
	}
	u, err := sandboxFrom(ts, &bp, map[string]any{
		"generateName": pool.GetName() + "-",
		"namespace":    pool.GetNamespace(),
	})
	if err != nil {
		return nil, err
	}
	u.SetLabels(map[string]string{
		WarmPoolLabel: poolHash, TemplateRefHashLabel: refHash, LaunchTypeLabel: "warm",
		PodTemplateHashLabel: podHash, TemplateHashLabel: bpHash, CreatedByLabel: "controller",
	})
	u.SetAnnotations(map[string]string{TemplateRefAnnotation: tmplName})
	u.SetOwnerReferences([]metav1.OwnerReference{controllerRef(pool)})
	return u, nil
}

func deepCopyJSON(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// writePoolStatus merge-patches the pool's status when it changed; zero
// counts are omitted, as the real controller's omitempty fields are.
func (e *extensions) writePoolStatus(ctx context.Context, pool *unstructured.Unstructured, st poolStatus) error {
	var cur poolStatus
	_ = fromObject(pool, &cur, "status")
	if cur == st {
		return nil
	}
	status := map[string]any{"replicas": nil, "readyReplicas": nil, "selector": nil, "observedGeneration": nil}
	set, err := toMap(st)
	if err != nil {
		return err
	}
	maps.Copy(status, set)
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": pool.GetResourceVersion()}, "status": status})
	if err != nil {
		return err
	}
	out, err := e.c.dyn.Resource(WarmPoolGVR).Namespace(pool.GetNamespace()).Patch(ctx, pool.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: poolController}, "status")
	if apierrors.IsConflict(err) {
		return nil // a newer pool is on its way through the informer
	}
	if err != nil {
		return fmt.Errorf("patch SandboxWarmPool %s/%s status: %w", pool.GetNamespace(), pool.GetName(), err)
	}
	e.wrote(WarmPoolGVR, out)
	return nil
}
