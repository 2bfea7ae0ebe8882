package sandboxctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Timing of the warm path while members have no Pod IP yet (the real
// controller's warmCandidateRetryInterval and warmCandidateGracePeriod).
const (
	warmCandidateRetryInterval = 500 * time.Millisecond
	warmCandidateGracePeriod   = 2 * time.Second
)

// Claim failure classes, mapped to Ready reasons by readyCondition.
var (
	errTemplateNotFound  = errors.New("SandboxTemplate not found")
	errWarmPoolNotFound  = errors.New("SandboxWarmPool not found")
	errInvalidMetadata   = errors.New("invalid additionalPodMetadata")
	errEnvRejected       = errors.New("environment variable injection rejected")
	errVCTDisallowed     = errors.New("volume claim templates are disallowed by the template")
	errVCTOverride       = errors.New("overriding volume claim templates is forbidden by the template")
	errVCTInvalid        = errors.New("invalid volume claim templates")
	errSandboxNotOwned   = errors.New("sandbox not owned by this claim")
	errNoCandidateYet    = errors.New("warm pool candidates are awaiting Pod IPs")
	restrictedDomains    = []string{"kubernetes.io", "k8s.io", "agents.x-k8s.io"}
	exemptedMetadataKeys = []string{SafeToEvictAnnotation}
)

type pendingCandidates struct{ retryAfter time.Duration }

func (p *pendingCandidates) Error() string { return errNoCandidateYet.Error() }

type claim struct {
	obj    *unstructured.Unstructured
	spec   claimSpec
	status claimStatus
}

func parseClaim(u *unstructured.Unstructured) (*claim, error) {
	cl := &claim{obj: u}
	if err := fromObject(u, &cl.spec, "spec"); err != nil {
		return nil, fmt.Errorf("SandboxClaim %s/%s spec: %w", u.GetNamespace(), u.GetName(), err)
	}
	if err := fromObject(u, &cl.status, "status"); err != nil {
		return nil, fmt.Errorf("SandboxClaim %s/%s status: %w", u.GetNamespace(), u.GetName(), err)
	}
	return cl, nil
}

func (cl *claim) key() string { return cl.obj.GetNamespace() + "/" + cl.obj.GetName() }

// expiry reports whether the claim's lifecycle has ended (shutdownTime
// reached, or ttlSecondsAfterFinished after the mirrored Finished
// condition) and otherwise how long until it does (0: never).
func (cl *claim) expiry(now time.Time) (bool, time.Duration) {
	lc := cl.spec.Lifecycle
	if lc == nil {
		return false, 0
	}
	var left time.Duration
	consider := func(t time.Time) bool {
		d := t.Sub(now)
		if d <= 0 {
			return true
		}
		if left == 0 || d < left {
			left = d
		}
		return false
	}
	if lc.ShutdownTime != nil && consider(lc.ShutdownTime.Time) {
		return true, 0
	}
	if lc.TTLSecondsAfterFinished != nil {
		if f := findCondition(cl.status.Conditions, "Finished"); f != nil && f.Status == metav1.ConditionTrue {
			if consider(f.LastTransitionTime.Add(time.Duration(*lc.TTLSecondsAfterFinished) * time.Second)) {
				return true, 0
			}
		}
	}
	return false, left
}

func hasClaimExpired(cs []metav1.Condition) bool {
	r := findCondition(cs, "Ready")
	return r != nil && r.Status == metav1.ConditionFalse && r.Reason == "ClaimExpired"
}

// reconcileClaim binds a claim to a Sandbox (adopting a warm pool member,
// else creating one named like the claim), mirrors its readiness, and
// enforces the claim's lifecycle.
func (e *extensions) reconcileClaim(ctx context.Context, ns, name string) (time.Duration, error) {
	u := e.latest(e.claims, ClaimGVR, ns, name)
	if u == nil || u.GetDeletionTimestamp() != nil {
		return 0, nil
	}
	cl, err := parseClaim(u)
	if err != nil {
		return 0, err
	}
	if cl.obj.GetAnnotations()[FirstObservedAnnotation] == "" {
		if err := e.patchClaimAnnotations(ctx, cl, map[string]any{FirstObservedAnnotation: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
			return 0, err
		}
	}
	orig := cl.status
	expired, left := cl.expiry(time.Now())
	if expired && !hasClaimExpired(cl.status.Conditions) {
		st := cloneClaimStatus(cl.status)
		setCondition(&st.Conditions, readyCondition(cl, nil, nil, true))
		if err := e.writeClaimStatus(ctx, cl, orig, st); err != nil {
			return 0, err
		}
		e.event(ctx, cl.obj, claimController, corev1.EventTypeNormal, "ClaimExpired", "Claim Expired", "Claim expired")
		e.add(kindClaim, ns, name)
		return 0, nil
	}
	policy := "Retain"
	if cl.spec.Lifecycle != nil && cl.spec.Lifecycle.ShutdownPolicy != "" {
		policy = cl.spec.Lifecycle.ShutdownPolicy
	}
	if expired && (policy == "Delete" || policy == "DeleteForeground") {
		e.event(ctx, cl.obj, claimController, corev1.EventTypeNormal, "ClaimExpired", "Deleting", fmt.Sprintf("Deleting Claim (ShutdownPolicy=%s)", policy))
		opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: new(cl.obj.GetUID())}}
		if policy == "DeleteForeground" {
			opts.PropagationPolicy = new(metav1.DeletePropagationForeground)
		}
		err := e.c.dyn.Resource(ClaimGVR).Namespace(ns).Delete(ctx, name, opts)
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("delete expired SandboxClaim %s (shutdownPolicy %s): %w", cl.key(), policy, err)
		}
		return 0, nil
	}

	var sb *sandbox
	var rerr error
	if expired {
		sb, rerr = e.reconcileExpiredClaim(ctx, cl)
	} else {
		sb, rerr = e.reconcileActiveClaim(ctx, cl)
	}
	var pc *pendingCandidates
	if errors.As(rerr, &pc) {
		return pc.retryAfter, nil
	}
	st := cloneClaimStatus(cl.status)
	computeClaimStatus(cl, &st, sb, rerr, expired)
	if err := e.writeClaimStatus(ctx, cl, orig, st); err != nil {
		return 0, errors.Join(rerr, err)
	}
	if r := findCondition(cl.status.Conditions, "Ready"); r != nil && r.Status == metav1.ConditionTrue && cl.obj.GetAnnotations()[FirstReadyAnnotation] == "" {
		if err := e.patchClaimAnnotations(ctx, cl, map[string]any{FirstReadyAnnotation: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
			return 0, errors.Join(rerr, err)
		}
	}
	if errors.Is(rerr, errWarmPoolNotFound) || errors.Is(rerr, errTemplateNotFound) {
		// The pool and template watches queue the claim when they appear.
		e.log.Debug("claim waits for its pool or template", "claim", cl.key(), "err", rerr)
		return left, nil
	}
	if rerr != nil && isSuppressed(rerr) {
		return left, nil
	}
	return left, rerr
}

func isSuppressed(err error) bool {
	for _, s := range []error{errInvalidMetadata, errSandboxNotOwned, errEnvRejected, errVCTDisallowed, errVCTOverride, errVCTInvalid} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func cloneClaimStatus(st claimStatus) claimStatus {
	out := claimStatus{Conditions: slices.Clone(st.Conditions), Sandbox: claimSandboxStatus{Name: st.Sandbox.Name, PodIPs: slices.Clone(st.Sandbox.PodIPs)}}
	return out
}

// setCondition is meta.SetStatusCondition, except that a condition
// forwarded from the Sandbox (one with a lastTransitionTime) is taken
// whole, as observed when a claim rebinds.
func setCondition(cs *[]metav1.Condition, c metav1.Condition) {
	if !c.LastTransitionTime.IsZero() {
		if existing := findCondition(*cs, c.Type); existing != nil {
			*existing = c
			return
		}
		*cs = append(*cs, c)
		return
	}
	meta.SetStatusCondition(cs, c)
}

func computeClaimStatus(cl *claim, st *claimStatus, sb *sandbox, err error, expired bool) {
	setCondition(&st.Conditions, readyCondition(cl, sb, err, expired))
	// Finished is mirrored from the Sandbox whole.
	if sb != nil {
		if f := findCondition(sb.status.Conditions, "Finished"); f != nil {
			fc := *f
			if existing := findCondition(st.Conditions, "Finished"); existing != nil {
				*existing = fc
			} else {
				st.Conditions = append(st.Conditions, fc)
			}
		} else {
			meta.RemoveStatusCondition(&st.Conditions, "Finished")
		}
	} else if !expired {
		meta.RemoveStatusCondition(&st.Conditions, "Finished")
	}
	switch {
	case sb != nil:
		st.Sandbox = claimSandboxStatus{Name: sb.obj.GetName(), PodIPs: slices.Clone(sb.status.PodIPs)}
	case err == nil || errors.Is(err, errSandboxNotOwned):
		st.Sandbox = claimSandboxStatus{}
	}
}

// readyCondition is the real controller's computeReadyCondition.
func readyCondition(cl *claim, sb *sandbox, err error, expired bool) metav1.Condition {
	gen := cl.obj.GetGeneration()
	c := func(reason, msg string) metav1.Condition {
		return metav1.Condition{Type: "Ready", Status: metav1.ConditionFalse, Reason: reason, Message: msg, ObservedGeneration: gen}
	}
	if err != nil {
		switch {
		case errors.Is(err, errTemplateNotFound):
			return c("TemplateNotFound", strings.TrimSuffix(err.Error(), ": "+errTemplateNotFound.Error()))
		case errors.Is(err, errWarmPoolNotFound):
			return c("WarmPoolNotFound", fmt.Sprintf("SandboxWarmPool %q not found", cl.spec.WarmPoolRef.Name))
		case errors.Is(err, errInvalidMetadata):
			return c("InvalidMetadata", err.Error())
		case errors.Is(err, errEnvRejected):
			return c("EnvVarsInjectionRejected", err.Error())
		case errors.Is(err, errSandboxNotOwned):
			return c("ClaimExpired", fmt.Sprintf("Claim expired. %v; deletion skipped.", err))
		case errors.Is(err, errVCTDisallowed), errors.Is(err, errVCTOverride), errors.Is(err, errVCTInvalid):
			return c("VolumeClaimTemplatesError", err.Error())
		}
		return c("ReconcilerError", "Error seen: "+err.Error())
	}
	if expired {
		return c("ClaimExpired", "Claim expired. Sandbox cleanup initiated.")
	}
	if sb == nil {
		return c("SandboxMissing", "Sandbox does not exist")
	}
	for _, sc := range sb.status.Conditions {
		if sc.Type == "Ready" && sc.Reason == "SandboxExpired" {
			return c("SandboxExpired", "Underlying Sandbox resource has expired independently of the Claim.")
		}
	}
	if r := findCondition(sb.status.Conditions, "Ready"); r != nil {
		out := *r
		out.ObservedGeneration = gen
		return out
	}
	return c("SandboxNotReady", "Sandbox is not ready")
}

// reconcileExpiredClaim deletes the Sandbox of a Retain claim.
func (e *extensions) reconcileExpiredClaim(ctx context.Context, cl *claim) (*sandbox, error) {
	name := cl.obj.GetName()
	if cl.status.Sandbox.Name != "" {
		name = cl.status.Sandbox.Name
	}
	u := e.latest(e.c.sandboxes, GVR, cl.obj.GetNamespace(), name)
	if u == nil {
		return nil, nil
	}
	if !controlledBy(u, cl.obj.GetUID()) {
		return nil, fmt.Errorf("%w: sandbox %q is not owned by claim %q", errSandboxNotOwned, u.GetName(), cl.obj.GetName())
	}
	sb, err := parseSandbox(u)
	if err != nil {
		return nil, err
	}
	if u.GetDeletionTimestamp() == nil {
		e.log.Info("Deleting Sandbox because Claim expired (Policy=Retain)", "sandbox", u.GetName(), "claim", cl.key())
		uid := u.GetUID()
		err := e.c.dyn.Resource(GVR).Namespace(u.GetNamespace()).Delete(ctx, u.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return sb, fmt.Errorf("failed to delete expired sandbox: %w", err)
		}
	}
	return sb, nil
}

// reconcileActiveClaim finds, adopts or creates the claim's Sandbox.
func (e *extensions) reconcileActiveClaim(ctx context.Context, cl *claim) (*sandbox, error) {
	if err := validateAdditionalPodMetadata(cl.spec.AdditionalPodMetadata); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidMetadata, err)
	}
	sb, err := e.getOrAdopt(ctx, cl)
	if err != nil {
		return nil, err
	}
	if sb != nil {
		return sb, e.syncClaimedMetadata(ctx, cl, sb)
	}
	_, tu, ts, err := e.templateOf(cl)
	if err != nil {
		return nil, err
	}
	return e.createClaimSandbox(ctx, cl, tu, ts)
}

// templateOf resolves the claim's pool and its template.
func (e *extensions) templateOf(cl *claim) (*unstructured.Unstructured, *unstructured.Unstructured, *templateSpec, error) {
	ns := cl.obj.GetNamespace()
	pool := e.latest(e.pools, WarmPoolGVR, ns, cl.spec.WarmPoolRef.Name)
	if pool == nil {
		return nil, nil, nil, fmt.Errorf("SandboxWarmPool %q not found: %w", cl.spec.WarmPoolRef.Name, errWarmPoolNotFound)
	}
	ref, _, _ := unstructured.NestedString(pool.Object, "spec", "sandboxTemplateRef", "name")
	tu := e.latest(e.templates, TemplateGVR, ns, ref)
	if tu == nil {
		return pool, nil, nil, fmt.Errorf("SandboxTemplate %q not found: %w", ref, errTemplateNotFound)
	}
	ts, err := parseTemplate(tu)
	if err != nil {
		return pool, nil, nil, err
	}
	return pool, tu, ts, nil
}

// getOrAdopt returns the claim's Sandbox: the one its status or its
// sandbox-name annotation names, the one named like the claim, or an
// adopted warm member (nil when it must be created cold).
func (e *extensions) getOrAdopt(ctx context.Context, cl *claim) (*sandbox, error) {
	ns := cl.obj.GetNamespace()
	get := func(name string) *unstructured.Unstructured { return e.latest(e.c.sandboxes, GVR, ns, name) }
	if name := cl.status.Sandbox.Name; name != "" {
		if u := get(name); u != nil && controlledBy(u, cl.obj.GetUID()) {
			return parseSandbox(u)
		}
	}
	if name := cl.obj.GetAnnotations()[SandboxNameAnnotation]; name != "" {
		u := get(name)
		switch {
		case u == nil:
			e.log.Info("Sandbox recorded in claim metadata not found, removing stale reference", "sandbox", name, "claim", cl.key())
			if err := e.patchClaimAnnotations(ctx, cl, map[string]any{SandboxNameAnnotation: nil}); err != nil {
				return nil, err
			}
		case controlledBy(u, cl.obj.GetUID()):
			return parseSandbox(u)
		default:
			ref := metav1.GetControllerOfNoCopy(u)
			if ref != nil && ref.Kind == WarmPoolKind && e.reserve(u.GetUID(), cl.obj.GetUID()) {
				sb, err := e.completeAdoption(ctx, cl, u)
				if err == nil {
					return sb, nil
				}
				e.unreserve(u.GetUID())
				if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
					return nil, err
				}
			}
			if err := e.patchClaimAnnotations(ctx, cl, map[string]any{SandboxNameAnnotation: nil}); err != nil {
				return nil, err
			}
		}
	}
	if u := get(cl.obj.GetName()); u != nil {
		if !controlledBy(u, cl.obj.GetUID()) {
			return nil, fmt.Errorf("sandbox %q is not controlled by claim %q. Please use a different claim name or delete the sandbox manually", u.GetName(), cl.obj.GetName())
		}
		return parseSandbox(u)
	}
	if len(cl.spec.Env) > 0 || len(cl.spec.VolumeClaimTemplates) > 0 {
		e.log.Info("Bypassing warm pool adoption because custom configuration is provided (env or volume claim templates)", "claim", cl.key())
		return nil, nil
	}
	return e.adoptFromPool(ctx, cl)
}

func (e *extensions) reserve(sbUID, claimUID types.UID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if owner, ok := e.reserved[sbUID]; ok && owner != claimUID {
		return false
	}
	e.reserved[sbUID] = claimUID
	return true
}

func (e *extensions) unreserve(sbUID types.UID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.reserved, sbUID)
}

// adoptFromPool adopts the oldest Ready member of the claim's pool that
// has a Pod IP (else a not-Ready one with an IP). While members exist
// without IPs it waits, for at most warmCandidateGracePeriod after the
// claim's creation.
func (e *extensions) adoptFromPool(ctx context.Context, cl *claim) (*sandbox, error) {
	pool := e.latest(e.pools, WarmPoolGVR, cl.obj.GetNamespace(), cl.spec.WarmPoolRef.Name)
	if pool == nil {
		return nil, nil
	}
	// Under Recreate, stale members are not handed out.
	var ps poolSpec
	_ = fromObject(pool, &ps, "spec")
	var stale func(*sandbox) bool
	if ps.UpdateStrategy != nil && ps.UpdateStrategy.Type == "Recreate" {
		if tu := e.latest(e.templates, TemplateGVR, pool.GetNamespace(), ps.SandboxTemplateRef.Name); tu != nil {
			if ts, err := parseTemplate(tu); err == nil {
				if _, bpHash, err := templateHashes(ts); err == nil {
					stale = func(sb *sandbox) bool { return memberStale(sb, tu.GetName(), ts, bpHash) }
				}
			}
		}
	}
	for range 3 {
		members, _ := e.poolMembers(pool)
		var ready, fallback *sandbox
		pending := 0
		for _, m := range members {
			e.mu.Lock()
			owner, taken := e.reserved[m.obj.GetUID()]
			e.mu.Unlock()
			if (taken && owner != cl.obj.GetUID()) || (stale != nil && stale(m)) {
				continue
			}
			switch {
			case len(m.status.PodIPs) == 0:
				pending++
			case isReady(m):
				if ready == nil {
					ready = m
				}
			case fallback == nil:
				fallback = m
			}
		}
		pick := ready
		if pick == nil {
			pick = fallback
		}
		if pick == nil {
			if pending > 0 {
				remaining := time.Until(cl.obj.GetCreationTimestamp().Add(warmCandidateGracePeriod))
				if remaining > 0 {
					return nil, &pendingCandidates{retryAfter: min(warmCandidateRetryInterval, remaining)}
				}
				e.log.Info("Warm pool candidates did not report Pod IPs within the grace period; falling back to cold creation", "claim", cl.key())
			}
			return nil, nil
		}
		if !e.reserve(pick.obj.GetUID(), cl.obj.GetUID()) {
			continue
		}
		e.log.Info("Attempting sandbox adoption", "sandbox", pick.obj.GetName(), "claim", cl.key())
		if err := e.annotateClaim(ctx, cl, pick.obj.GetName()); err != nil {
			e.unreserve(pick.obj.GetUID())
			return nil, err
		}
		sb, err := e.completeAdoption(ctx, cl, pick.obj)
		if err != nil {
			e.unreserve(pick.obj.GetUID())
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				continue
			}
			return nil, err
		}
		e.event(ctx, cl.obj, claimController, corev1.EventTypeNormal, "SandboxAdopted", "Adoption", fmt.Sprintf("Adopted warm pool Sandbox %q", sb.obj.GetName()))
		return sb, nil
	}
	e.log.Info("Failed to adopt sandbox after max retries", "claim", cl.key())
	return nil, nil
}

// annotateClaim records the adopted Sandbox in the claim's
// agents.x-k8s.io/sandbox-name annotation with a full update, which also
// writes spec.additionalPodMetadata: {} as the real controller's typed PUT
// does (bumping the generation when it was absent).
func (e *extensions) annotateClaim(ctx context.Context, cl *claim, sbName string) error {
	u := cl.obj.DeepCopy()
	for attempt := 0; ; attempt++ {
		ann := u.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[SandboxNameAnnotation] = sbName
		u.SetAnnotations(ann)
		if _, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "additionalPodMetadata"); !ok {
			_ = unstructured.SetNestedField(u.Object, map[string]any{}, "spec", "additionalPodMetadata")
		}
		out, err := e.c.dyn.Resource(ClaimGVR).Namespace(u.GetNamespace()).Update(ctx, u, metav1.UpdateOptions{FieldManager: claimController})
		if err == nil {
			e.wrote(ClaimGVR, out)
			cl.obj = out
			return nil
		}
		if !apierrors.IsConflict(err) || attempt == 2 {
			return fmt.Errorf("record the adopted Sandbox %q on SandboxClaim %s: %w", sbName, cl.key(), err)
		}
		live, gerr := e.c.dyn.Resource(ClaimGVR).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		if live.GetUID() != cl.obj.GetUID() {
			return fmt.Errorf("SandboxClaim %s was replaced", cl.key())
		}
		u = live
	}
}

// claimPodMetadata is the podTemplate metadata of a claimed Sandbox: the
// template's, plus claim-uid, the template ref hash, created-by from the
// claim (else none) and the claim's additionalPodMetadata.
func claimPodMetadata(cl *claim, base podMetadata, refHash string) (podMetadata, error) {
	m := podMetadata{Labels: maps.Clone(base.Labels), Annotations: maps.Clone(base.Annotations)}
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	m.Labels[ClaimUIDLabel] = string(cl.obj.GetUID())
	if refHash != "" {
		m.Labels[TemplateRefHashLabel] = refHash
	}
	if v := cl.obj.GetLabels()[CreatedByLabel]; v != "" {
		m.Labels[CreatedByLabel] = v
	} else {
		delete(m.Labels, CreatedByLabel)
	}
	if err := mergePodMetadata(&m, cl.spec.AdditionalPodMetadata); err != nil {
		return m, err
	}
	return m, nil
}

// completeAdoption moves a warm member to the claim with one
// optimistically locked merge patch: the controller ownerReference, the
// labels (pool labels dropped, claim-uid and launch-type added) and the
// podTemplate metadata (template + claim, without safe-to-evict).
func (e *extensions) completeAdoption(ctx context.Context, cl *claim, member *unstructured.Unstructured) (*sandbox, error) {
	labels := maps.Clone(member.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	refHash := labels[TemplateRefHashLabel]
	for _, k := range []string{WarmPoolLabel, PodTemplateHashLabel, TemplateHashLabel} {
		delete(labels, k)
	}
	labels[LaunchTypeLabel] = "warm"
	labels[ClaimUIDLabel] = string(cl.obj.GetUID())
	if v := cl.obj.GetLabels()[CreatedByLabel]; v != "" {
		labels[CreatedByLabel] = v
	} else {
		delete(labels, CreatedByLabel)
	}
	var cur podMetadata
	if err := fromObject(member, &cur, "spec", "podTemplate", "metadata"); err != nil {
		return nil, err
	}
	base := cur
	if _, tu, ts, err := e.templateOf(cl); err == nil {
		base = ts.PodTemplate.ObjectMeta
		if refHash == "" {
			refHash = NameHash(tu.GetName())
		}
	} else {
		base = podMetadata{Labels: maps.Clone(cur.Labels), Annotations: maps.Clone(cur.Annotations)}
		for _, k := range []string{WarmPoolLabel, PodTemplateHashLabel, TemplateHashLabel} {
			delete(base.Labels, k)
		}
		if base.Annotations[SafeToEvictAnnotation] == "true" {
			delete(base.Annotations, SafeToEvictAnnotation)
		}
	}
	if refHash != "" {
		labels[TemplateRefHashLabel] = refHash
	}
	want, err := claimPodMetadata(cl, base, refHash)
	if err != nil {
		return nil, err
	}
	ann := member.GetAnnotations()
	metaPatch := map[string]any{
		"resourceVersion": member.GetResourceVersion(),
		"labels":          mapPatch(member.GetLabels(), labels),
		"ownerReferences": []any{mustMap(controllerRef(cl.obj))},
	}
	if ann[PodNameAnnotation] != member.GetName() {
		metaPatch["annotations"] = map[string]any{PodNameAnnotation: member.GetName()}
	}
	patch := map[string]any{
		"metadata": metaPatch,
		"spec": map[string]any{"podTemplate": map[string]any{"metadata": map[string]any{
			"labels":      mapPatch(cur.Labels, want.Labels),
			"annotations": mapPatch(cur.Annotations, want.Annotations),
		}}},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, err
	}
	out, err := e.c.dyn.Resource(GVR).Namespace(member.GetNamespace()).Patch(ctx, member.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: claimController})
	if err != nil {
		// Someone else moved it first? Ask the API server.
		live, gerr := e.c.dyn.Resource(GVR).Namespace(member.GetNamespace()).Get(ctx, member.GetName(), metav1.GetOptions{})
		if gerr == nil && controlledBy(live, cl.obj.GetUID()) {
			e.wrote(GVR, live)
			return parseSandbox(live)
		}
		return nil, err
	}
	e.wrote(GVR, out)
	e.log.Info("Successfully adopted sandbox from warm pool", "sandbox", out.GetName(), "claim", cl.key())
	return parseSandbox(out)
}

func mustMap(v any) map[string]any {
	m, _ := toMap(v)
	return m
}

// mapPatch is the merge patch turning have into want.
func mapPatch(have, want map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			out[k] = v
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

// syncClaimedMetadata keeps a bound Sandbox's labels and podTemplate
// metadata in line with the template and the claim (the real
// controller's fast path).
func (e *extensions) syncClaimedMetadata(ctx context.Context, cl *claim, sb *sandbox) error {
	_, tu, ts, err := e.templateOf(cl)
	if err != nil {
		if len(cl.spec.AdditionalPodMetadata.Labels) > 0 || len(cl.spec.AdditionalPodMetadata.Annotations) > 0 {
			return fmt.Errorf("failed to get template for metadata propagation: %w", err)
		}
		return nil
	}
	refHash := NameHash(tu.GetName())
	want, err := claimPodMetadata(cl, ts.PodTemplate.ObjectMeta, refHash)
	if err != nil {
		return err
	}
	var cur podMetadata
	if err := fromObject(sb.obj, &cur, "spec", "podTemplate", "metadata"); err != nil {
		return err
	}
	labels := maps.Clone(sb.obj.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	labels[TemplateRefHashLabel] = refHash
	if v := cl.obj.GetLabels()[CreatedByLabel]; v != "" {
		labels[CreatedByLabel] = v
	} else {
		delete(labels, CreatedByLabel)
	}
	lp, pl, pa := mapPatch(sb.obj.GetLabels(), labels), mapPatch(cur.Labels, want.Labels), mapPatch(cur.Annotations, want.Annotations)
	if len(lp) == 0 && len(pl) == 0 && len(pa) == 0 {
		return nil
	}
	b, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"labels": lp},
		"spec":     map[string]any{"podTemplate": map[string]any{"metadata": map[string]any{"labels": pl, "annotations": pa}}},
	})
	if err != nil {
		return err
	}
	out, err := e.c.dyn.Resource(GVR).Namespace(sb.obj.GetNamespace()).Patch(ctx, sb.obj.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: claimController})
	if err != nil {
		return fmt.Errorf("failed to patch sandbox metadata for claim %q: %w", cl.obj.GetName(), err)
	}
	e.wrote(GVR, out)
	sb.obj = out
	return nil
}

// createClaimSandbox is the cold path: a Sandbox named like the claim,
// built from the template with the claim's metadata, env and volume claim
// templates.
func (e *extensions) createClaimSandbox(ctx context.Context, cl *claim, tu *unstructured.Unstructured, ts *templateSpec) (*sandbox, error) {
	bp := blueprint{}
	if err := deepCopyJSON(ts.blueprint, &bp); err != nil {
		return nil, err
	}
	if len(cl.spec.VolumeClaimTemplates) > 0 {
		merged, err := mergeVolumeClaimTemplates(ts.VolumeClaimTemplates, cl.spec.VolumeClaimTemplates, ts.VolumeClaimTemplatesPolicy)
		if err != nil {
			return nil, fmt.Errorf("failed to merge volume claim templates: %w", err)
		}
		bp.VolumeClaimTemplates = merged
	} else if err := validateVolumeClaimTemplates(ts.VolumeClaimTemplates); err != nil {
		return nil, fmt.Errorf("invalid volume claim templates in template: %w", err)
	}
	refHash := NameHash(tu.GetName())
	labels := map[string]string{ClaimUIDLabel: string(cl.obj.GetUID()), LaunchTypeLabel: "cold", TemplateRefHashLabel: refHash}
	if v := cl.obj.GetLabels()[CreatedByLabel]; v != "" {
		labels[CreatedByLabel] = v
	}
	pm, err := claimPodMetadata(cl, bp.PodTemplate.ObjectMeta, refHash)
	if err != nil {
		return nil, err
	}
	bp.PodTemplate.ObjectMeta = pm
	if len(cl.spec.Env) > 0 {
		if err := injectEnv(ts.EnvVarsInjectionPolicy, &bp.PodTemplate.Spec, cl.spec.Env); err != nil {
			return nil, err
		}
	}
	u, err := sandboxFrom(ts, &bp, map[string]any{"name": cl.obj.GetName(), "namespace": cl.obj.GetNamespace()})
	if err != nil {
		return nil, err
	}
	u.SetLabels(labels)
	u.SetAnnotations(map[string]string{TemplateRefAnnotation: tu.GetName()})
	u.SetOwnerReferences([]metav1.OwnerReference{controllerRef(cl.obj)})
	out, err := e.c.dyn.Resource(GVR).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{FieldManager: claimController})
	if apierrors.IsAlreadyExists(err) {
		live, gerr := e.c.dyn.Resource(GVR).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
		if gerr != nil {
			return nil, gerr
		}
		if !controlledBy(live, cl.obj.GetUID()) {
			return nil, fmt.Errorf("sandbox %q is not controlled by claim %q. Please use a different claim name or delete the sandbox manually", live.GetName(), cl.obj.GetName())
		}
		e.wrote(GVR, live)
		return parseSandbox(live)
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox create error: %w", err)
	}
	e.wrote(GVR, out)
	e.log.Info("Created sandbox for claim", "claim", cl.key(), "sandbox", out.GetName())
	e.event(ctx, cl.obj, claimController, corev1.EventTypeNormal, "SandboxProvisioned", "Provisioning", fmt.Sprintf("Created Sandbox %q", out.GetName()))
	return parseSandbox(out)
}

// injectEnv applies the claim's env per the template's
// envVarsInjectionPolicy: untargeted variables go to the first container.
func injectEnv(policy string, spec *corev1.PodSpec, env []claimEnv) error {
	if policy != "Allowed" && policy != "Overrides" {
		return fmt.Errorf("%w: environment variable injection is not allowed by the template policy", errEnvRejected)
	}
	byContainer := map[string][]claimEnv{}
	var untargeted []claimEnv
	for _, v := range env {
		if v.ContainerName == "" {
			untargeted = append(untargeted, v)
		} else {
			byContainer[v.ContainerName] = append(byContainer[v.ContainerName], v)
		}
	}
	names := map[string]bool{}
	for _, c := range spec.InitContainers {
		names[c.Name] = true
	}
	for _, c := range spec.Containers {
		names[c.Name] = true
	}
	for _, v := range env {
		if v.ContainerName != "" && !names[v.ContainerName] {
			return fmt.Errorf("target container %q not found in template for environment variable %q", v.ContainerName, v.Name)
		}
	}
	inject := func(c *corev1.Container, vars []claimEnv) error {
		if policy == "Allowed" && len(c.EnvFrom) > 0 {
			return fmt.Errorf("%w: container %q uses EnvFrom sources; Allowed policy cannot safely prevent overriding EnvFrom-provided variables", errEnvRejected, c.Name)
		}
		for _, v := range vars {
			i := slices.IndexFunc(c.Env, func(ev corev1.EnvVar) bool { return ev.Name == v.Name })
			switch {
			case i >= 0 && policy != "Overrides":
				return fmt.Errorf("environment variable override is not allowed by the template policy for variable %q", v.Name)
			case i >= 0:
				c.Env[i] = corev1.EnvVar{Name: v.Name, Value: v.Value}
			default:
				c.Env = append(c.Env, corev1.EnvVar{Name: v.Name, Value: v.Value})
			}
		}
		return nil
	}
	for i := range spec.InitContainers {
		if vars := byContainer[spec.InitContainers[i].Name]; len(vars) > 0 {
			if err := inject(&spec.InitContainers[i], vars); err != nil {
				return err
			}
		}
	}
	for i := range spec.Containers {
		vars := slices.Clone(byContainer[spec.Containers[i].Name])
		if i == 0 {
			vars = append(vars, untargeted...)
		}
		if len(vars) > 0 {
			if err := inject(&spec.Containers[i], vars); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateVolumeClaimTemplates(vcts []pvcTemplate) error {
	names := map[string]bool{}
	for i, v := range vcts {
		if v.Name == "" {
			return fmt.Errorf("%w: name at index %d is empty", errVCTInvalid, i)
		}
		if names[v.Name] {
			return fmt.Errorf("%w: duplicate name %q", errVCTInvalid, v.Name)
		}
		names[v.Name] = true
	}
	return nil
}

func mergeVolumeClaimTemplates(tmpl, claimed []pvcTemplate, policy string) ([]pvcTemplate, error) {
	if err := validateVolumeClaimTemplates(tmpl); err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	if err := validateVolumeClaimTemplates(claimed); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	switch policy {
	case "", "Disallowed":
		return nil, errVCTDisallowed
	case "Allowed":
		for _, c := range claimed {
			if slices.ContainsFunc(tmpl, func(t pvcTemplate) bool { return t.Name == c.Name }) {
				return nil, fmt.Errorf("%w: cannot override template volume %q", errVCTOverride, c.Name)
			}
		}
		return append(slices.Clone(tmpl), claimed...), nil
	case "Overrides":
		out := make([]pvcTemplate, 0, len(tmpl)+len(claimed))
		used := map[string]bool{}
		for _, t := range tmpl {
			if i := slices.IndexFunc(claimed, func(c pvcTemplate) bool { return c.Name == t.Name }); i >= 0 {
				out = append(out, claimed[i])
				used[t.Name] = true
			} else {
				out = append(out, t)
			}
		}
		for _, c := range claimed {
			if !used[c.Name] {
				out = append(out, c)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown volume claim templates policy %q", policy)
}

// validateAdditionalPodMetadata is the real controller's check: label keys
// need a domain in the allow-list (sandbox.users.io by default, or a
// subdomain), annotation keys must not be in a system domain (except
// safe-to-evict), label values must be valid.
func validateAdditionalPodMetadata(m podMetadata) error {
	check := func(key, value string, isLabel bool) error {
		kind := "annotation"
		if isLabel {
			kind = "label"
		}
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			return fmt.Errorf("invalid %s key: %q: %s", kind, key, strings.Join(errs, "; "))
		}
		if isLabel && strings.EqualFold(key, "app") && strings.EqualFold(value, "sandbox-router") {
			return fmt.Errorf("restricted system label value: %q=%q is not allowed in AdditionalPodMetadata", key, value)
		}
		domain := ""
		if prefix, _, ok := strings.Cut(key, "/"); ok {
			domain = strings.ToLower(prefix)
		} else if isLabel {
			return fmt.Errorf("label %q must have a domain prefix (e.g. 'sandbox.users.io/my-label') to prevent opting into unintended policy domains", key)
		}
		if isLabel {
			if domain != DefaultAllowedLabelDomain && !strings.HasSuffix(domain, "."+DefaultAllowedLabelDomain) {
				return fmt.Errorf("label domain %q is not in the allowlist", domain)
			}
			if errs := validation.IsValidLabelValue(value); len(errs) > 0 {
				return fmt.Errorf("invalid label value: %q does not match allowed pattern: %s", value, strings.Join(errs, "; "))
			}
			return nil
		}
		for _, d := range restrictedDomains {
			if (domain == d || strings.HasSuffix(domain, "."+d)) && !slices.Contains(exemptedMetadataKeys, key) {
				return fmt.Errorf("restricted system domain: %q is not allowed in AdditionalPodMetadata", key)
			}
		}
		return nil
	}
	for _, k := range sortedKeys(m.Labels) {
		if err := check(k, m.Labels[k], true); err != nil {
			return fmt.Errorf("failed to validate label %q: %w", k, err)
		}
	}
	for _, k := range sortedKeys(m.Annotations) {
		if err := check(k, m.Annotations[k], false); err != nil {
			return fmt.Errorf("failed to validate annotation %q: %w", k, err)
		}
	}
	return nil
}

// mergePodMetadata adds the claim's metadata to the template's, refusing
// to change a value the template sets.
func mergePodMetadata(m *podMetadata, claimMeta podMetadata) error {
	if err := validateAdditionalPodMetadata(claimMeta); err != nil {
		return err
	}
	for _, k := range sortedKeys(claimMeta.Labels) {
		if tv, ok := m.Labels[k]; ok && tv != claimMeta.Labels[k] {
			return fmt.Errorf("metadata override conflict: label %q is defined in template with value %q, but claim requests %q", k, tv, claimMeta.Labels[k])
		}
	}
	for _, k := range sortedKeys(claimMeta.Annotations) {
		if tv, ok := m.Annotations[k]; ok && tv != claimMeta.Annotations[k] {
			return fmt.Errorf("metadata override conflict: annotation %q is defined in template with value %q, but claim requests %q", k, tv, claimMeta.Annotations[k])
		}
	}
	if len(claimMeta.Labels) > 0 {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		maps.Copy(m.Labels, claimMeta.Labels)
	}
	if len(claimMeta.Annotations) > 0 {
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		maps.Copy(m.Annotations, claimMeta.Annotations)
	}
	return nil
}

// patchClaimAnnotations merge-patches the claim's annotations (nil
// removes one).
func (e *extensions) patchClaimAnnotations(ctx context.Context, cl *claim, ann map[string]any) error {
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return err
	}
	out, err := e.c.dyn.Resource(ClaimGVR).Namespace(cl.obj.GetNamespace()).Patch(ctx, cl.obj.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: claimController})
	if err != nil {
		return fmt.Errorf("patch SandboxClaim %s annotations: %w", cl.key(), err)
	}
	e.wrote(ClaimGVR, out)
	cl.obj = out
	return nil
}

// writeClaimStatus merge-patches /status with an optimistic lock when st
// differs from the status read. A conflict is dropped: the write that
// caused it queues the claim again through the informer.
func (e *extensions) writeClaimStatus(ctx context.Context, cl *claim, orig, st claimStatus) error {
	sortConds := func(cs []metav1.Condition) {
		slices.SortFunc(cs, func(a, b metav1.Condition) int { return compareStrings(a.Type, b.Type) })
	}
	sortConds(orig.Conditions)
	sortConds(st.Conditions)
	ob, _ := json.Marshal(orig)
	nb, _ := json.Marshal(st)
	if string(ob) == string(nb) {
		return nil
	}
	sbStatus := map[string]any{"name": nil, "podIPs": nil}
	if st.Sandbox.Name != "" {
		sbStatus["name"] = st.Sandbox.Name
	}
	if len(st.Sandbox.PodIPs) > 0 {
		sbStatus["podIPs"] = st.Sandbox.PodIPs
	}
	conds := any(nil)
	if len(st.Conditions) > 0 {
		conds = st.Conditions
	}
	b, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": cl.obj.GetResourceVersion()},
		"status":   map[string]any{"conditions": conds, "sandbox": sbStatus},
	})
	if err != nil {
		return err
	}
	out, err := e.c.dyn.Resource(ClaimGVR).Namespace(cl.obj.GetNamespace()).Patch(ctx, cl.obj.GetName(), types.MergePatchType, b, metav1.PatchOptions{FieldManager: claimController}, "status")
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("patch SandboxClaim %s status: %w", cl.key(), err)
	}
	e.wrote(ClaimGVR, out)
	cl.obj = out
	cl.status = st
	return nil
}

// sandboxFrom is the Sandbox of a blueprint with the template's secure
// defaults applied, as both a claim's cold path and a pool member are made.
func sandboxFrom(ts *templateSpec, bp *blueprint, metadata map[string]any) (*unstructured.Unstructured, error) {
	applySecureDefaults(ts, &bp.PodTemplate.Spec)
	spec, err := toMap(bp)
	if err != nil {
		return nil, err
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": APIVersion,
		"kind":       Kind,
		"metadata":   metadata,
		"spec":       spec,
	}}, nil
}
