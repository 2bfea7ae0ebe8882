package plugin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// AcquireParams are environmentAcquireLease's params.
type AcquireParams struct {
	BaseParams
	RunID                      string         `json:"runId"`
	AgentID                    string         `json:"agentId,omitempty"`
	AdapterType                string         `json:"adapterType,omitempty"`
	WorkspaceMode              string         `json:"workspaceMode,omitempty"`
	RequestedCwd               string         `json:"requestedCwd,omitempty"`
	ExecutionWorkspaceID       *string        `json:"executionWorkspaceId,omitempty"`
	ExecutionWorkspaceSettings map[string]any `json:"executionWorkspaceSettings,omitempty"`
	RequestedExpiresAt         *string        `json:"requestedExpiresAt,omitempty"`
}

// Lease is the host's PluginEnvironmentLease.
type Lease struct {
	ProviderLeaseID *string        `json:"providerLeaseId"`
	Metadata        map[string]any `json:"metadata,omitempty"`
	ExpiresAt       *string        `json:"expiresAt,omitempty"`
}

// LeaseMetadata is what the provider keeps on a lease. The host merges it
// flat into its own lease metadata, so the names avoid the host's keys.
type LeaseMetadata struct {
	Provider                  string             `json:"provider"`
	Namespace                 string             `json:"namespace"`
	Backend                   string             `json:"backend"`
	WorkloadName              string             `json:"workloadName"`
	WorkloadAPIVersion        string             `json:"workloadApiVersion"`
	WorkloadKind              string             `json:"workloadKind"`
	WorkloadUID               string             `json:"workloadUid"`
	SandboxName               string             `json:"sandboxName"`
	PodName                   string             `json:"podName,omitempty"`
	PodUID                    string             `json:"podUid,omitempty"`
	SecretName                string             `json:"secretName"`
	RunObjects                []string           `json:"runObjects,omitempty"`
	ScopedNetworkPolicyName   string             `json:"scopedNetworkPolicyName,omitempty"`
	ScopedNetworkEgress       policy.EgressGrant `json:"scopedNetworkEgress"`
	RemoteCwd                 string             `json:"remoteCwd"`
	ExpiresAt                 string             `json:"expiresAt,omitempty"`
	Phase                     string             `json:"phase,omitempty"`
	NativeFileSyncUnsupported bool               `json:"nativeFileSyncUnsupported"`
	ResumedLease              bool               `json:"resumedLease,omitempty"`
}

func (m LeaseMetadata) toMap() map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

func metadataFrom(raw map[string]any) LeaseMetadata {
	var m LeaseMetadata
	b, _ := json.Marshal(raw)
	_ = json.Unmarshal(b, &m)
	return m
}

func strPtr(s string) *string { return &s }

// AcquireLease ensures the tenant, claims the run's workload, creates the
// run's Secret and scoped egress policy (owned by the workload) and returns
// without waiting for the pod. If a step after the claim fails, everything
// this call created is deleted again and the error says so.
func (p *Provider) AcquireLease(ctx context.Context, in AcquireParams) (Lease, error) {
	if err := requireIDs(in.BaseParams, "runId", in.RunID); err != nil {
		return Lease{}, err
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return Lease{}, err
	}
	backend, err := p.backend(cfg.Backend)
	if err != nil {
		return Lease{}, err
	}
	ns, err := p.tenantNamespace(cfg, in.CompanyID)
	if err != nil {
		return Lease{}, err
	}
	requested := ""
	if in.RequestedExpiresAt != nil {
		requested = *in.RequestedExpiresAt
	}
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return Lease{}, err
	}
	// build makes the run's values for a workload of that name and
	// BOOTSTRAP_TOKEN.
	build := func(name, token string) (Values, RunFacts, error) {
		r := &RunInput{
			RunID: in.RunID, AgentID: in.AgentID, EnvironmentID: in.EnvironmentID, AdapterType: in.AdapterType,
			ExecutionWorkspaceSettings: in.ExecutionWorkspaceSettings, RequestedExpiresAt: requested,
			Mode: backend.Backend.Mode, PodLabel: backend.Backend.PodLabel(), Now: p.Now(), Name: name, Token: token}
		if backend.Backend.Standby {
			r.PodLabelValue = name // the one value a standby's pod can carry
		}
		return BuildValues(cfg, ValuesInput{CompanyID: in.CompanyID, Namespace: ns, Getenv: p.Getenv, Run: r})
	}
	name := policy.NewRunName()
	runValues, run, err := build(name, hex.EncodeToString(token))
	if err != nil {
		return Lease{}, err
	}
	if err := backendServes(backend, runValues, run.AdapterType); err != nil {
		return Lease{}, err
	}
	for _, w := range run.Warnings {
		p.Log.Warn("task egress grant", "companyId", in.CompanyID, "warning", w)
	}
	grant, deadline, values := run.Grant, run.Deadline, runValues.Map()
	cl, err := p.cluster(cfg)
	if err != nil {
		return Lease{}, err
	}
	// Refuse before provisioning anything when the backend's API is absent.
	if _, err := cl.engine.Resolve(backend); err != nil {
		return Lease{}, err
	}
	tenant := p.tenantValues(cfg, in.CompanyID, ns)
	if err := p.ensureTenant(ctx, cl, ns, tenant, false); err != nil {
		return Lease{}, err
	}

	// A standby of this environment, when the worker holds one, becomes
	// the run's workload with one patch; either way the next is made.
	var sb *standby
	refill := func() {}
	if backend.Backend.Standby && cfg.StandbyLeases > 0 {
		key := newStandbyKey(ns, in.CompanyID, in.EnvironmentID, backend, cfg)
		refill = func() { p.refillStandbys(cl, key, cfg, in.CompanyID, in.EnvironmentID, backend) }
		sb = cl.standbys.take(key, p.Now())
	}
	runSpecs := p.Catalog.Used(resource.UseRun)
	var workload *unstructured.Unstructured
	var objs []*unstructured.Unstructured
	if sb != nil {
		// The standby has its run objects (Secret, scoped policy) already,
		// made for a run of the default adapter with no task grant: it
		// serves a run whose run objects render the same (labels aside),
		// with one write; another run leaves it to the next.
		taken, facts, err := build(sb.obj.GetName(), sb.token())
		if err != nil {
			go p.dropStandby(cl, backend, sb, "the run's values for it failed: "+err.Error(), nil)
			refill()
			return Lease{}, err
		}
		tv := taken.Map()
		if fits, why := standbyFits(runSpecs, sb.values, tv); !fits {
			p.Log.Info("standby lease not taken: made for another run", "workload", engine.RefOf(backend, sb.obj).String(), "reason", why)
			cl.standbys.putBack(sb)
			sb = nil
		} else if workload, err = p.takeStandby(ctx, cl, backend, sb, tv, taken.Run.Labels); err != nil {
			sb, workload = nil, nil
		} else {
			name, runValues, run, objs = sb.obj.GetName(), taken, facts, sb.runObjs
			grant, deadline, values = run.Grant, run.Deadline, tv
		}
	}
	if workload == nil {
		if workload, err = p.createWorkload(ctx, cl, backend, ns, tenant, values); err != nil {
			return Lease{}, err
		}
		tobjs, created, err := p.createRunObjects(ctx, cl, runSpecs, ns, values, workload)
		if err != nil {
			refill()
			return Lease{}, p.undoAcquire(ctx, cl, backend, workload, created, err)
		}
		objs = tobjs
	}
	meta := LeaseMetadata{
		Provider: "kubernetes", Namespace: ns, Backend: backend.Name,
		WorkloadName: name, WorkloadAPIVersion: workload.GetAPIVersion(), WorkloadKind: workload.GetKind(),
		WorkloadUID: string(workload.GetUID()), SandboxName: name, SecretName: runValues.Run.SecretName,
		ScopedNetworkEgress: grant, RemoteCwd: cfg.WorkspacePath, ExpiresAt: deadline.UTC().Format(time.RFC3339),
		Phase: "Pending", NativeFileSyncUnsupported: backend.Backend.Mode != resource.ModeExec,
	}
	for i, o := range objs {
		if o == nil {
			continue // not wanted under this config
		}
		meta.RunObjects = append(meta.RunObjects, runSpecs[i].Name+"/"+o.GetName())
		if o.GetName() == runValues.Run.EgressPolicyName {
			meta.ScopedNetworkPolicyName = o.GetName()
		}
	}
	// The next standby is made after this run's first command when the
	// worker knows this one's pod (the two would compete for the API
	// server and the controller), else now.
	if sb == nil || !p.rememberStandbyPod(engine.RefOf(backend, workload), in.BaseParams, sb, runSpecs, objs, &meta, refill) {
		refill()
	}
	p.Log.Info("lease acquired", "companyId", in.CompanyID, "runId", in.RunID, "workload", engine.RefOf(backend, workload).String(),
		"backend", backend.Name, "expiresAt", meta.ExpiresAt, "standby", sb != nil)
	exp := meta.ExpiresAt
	return Lease{ProviderLeaseID: strPtr(name), Metadata: meta.toMap(), ExpiresAt: &exp}, nil
}

// createRunObjects creates the run objects of the values, owned by
// workload, at once and in parallel (they depend on nothing but its UID).
// objs is indexed like specs (nil: not wanted); created lists what exists
// when err is not nil.
func (p *Provider) createRunObjects(ctx context.Context, cl *cluster, specs []*resource.Resource, ns string, values map[string]any, workload *unstructured.Unstructured) (objs []*unstructured.Unstructured, created []engine.Ref, err error) {
	objs = make([]*unstructured.Unstructured, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() { objs[i], errs[i] = cl.engine.Create(ctx, s, ns, values, workload) })
	}
	wg.Wait()
	for i, o := range objs {
		if o != nil {
			created = append(created, engine.RefOf(specs[i], o))
		}
	}
	return objs, created, errors.Join(errs...)
}

// createWorkload creates a run's workload. When the tenant namespace is
// gone although it was applied earlier (deleted by hand), it applies the
// tenant again and creates it once more.
func (p *Provider) createWorkload(ctx context.Context, cl *cluster, backend *resource.Resource, ns string, tenant, values map[string]any) (*unstructured.Unstructured, error) {
	workload, err := cl.engine.Create(ctx, backend, ns, values, nil)
	if apierrors.IsNotFound(err) {
		if err = p.ensureTenant(ctx, cl, ns, tenant, true); err == nil {
			workload, err = cl.engine.Create(ctx, backend, ns, values, nil)
		}
	}
	return workload, err
}

// undoAcquire deletes what a failed acquire created, newest first, and
// returns an error that says what failed and whether cleanup was complete.
func (p *Provider) undoAcquire(ctx context.Context, cl *cluster, backend *resource.Resource, workload *unstructured.Unstructured, created []engine.Ref, cause error) error {
	// The acquire's own context may have ended (that may be the cause):
	// clean up within what is left until the reply is due.
	ctx, cancel := engine.CleanupContext(ctx)
	defer cancel()
	var failed []string
	refs := append([]engine.Ref{engine.RefOf(backend, workload)}, created...)
	for i := len(refs) - 1; i >= 0; i-- {
		if _, err := cl.engine.Release(ctx, refs[i]); err != nil {
			failed = append(failed, fmt.Sprintf("%s (%v)", refs[i], err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("acquiring the lease failed: %w; cleanup was incomplete, delete by hand: %s", cause, strings.Join(failed, "; "))
	}
	return fmt.Errorf("acquiring the lease failed: %w; everything this acquire created (%s and its run objects) was deleted", cause, engine.RefOf(backend, workload))
}

func union(a, b []string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, s := range append(append([]string{}, a...), b...) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// tenantRecheck is how long an applied tenant is trusted before the next
// acquire applies it again (repairing drift). A changed config applies at
// once: it changes the values.
const tenantRecheck = 5 * time.Minute

// ensureTenant server-side applies the tenant objects unless this worker
// applied the very same values to this cluster within tenantRecheck, so an
// acquire costs one apply per tenant change rather than one per object.
func (p *Provider) ensureTenant(ctx context.Context, cl *cluster, ns string, values map[string]any, force bool) error {
	// Who the provider is (its RoleBinding in the tenant names it) is part
	// of the values, and so of the cache key.
	if err := p.addProviderIdentity(ctx, cl, values); err != nil {
		return err
	}
	specs := p.Catalog.Used(resource.UseTenant)
	// The rendered key of the same values is remembered: rendering every
	// tenant file on every acquire costs ~1 ms of CPU.
	raw, err := json.Marshal(values)
	if err != nil {
		return err
	}
	vkey := ns + "\x00" + hex.EncodeToString(sha256Sum(raw))
	var key string
	if k, ok := cl.tenantKeys.Load(vkey); ok {
		key = k.(string)
	} else if key, err = tenantKey(specs, ns, values); err != nil {
		return err
	} else {
		cl.tenantKeys.Store(vkey, key)
	}
	if t, ok := cl.tenants.Load(key); ok && !force && p.Now().Sub(t.(time.Time)) < tenantRecheck {
		return nil
	}
	// One apply per tenant at a time: concurrent acquires for a new
	// company wait for the one in flight instead of applying it again.
	return cl.tenantFlights.do(ctx, key, func() error {
		if t, ok := cl.tenants.Load(key); ok && !force && p.Now().Sub(t.(time.Time)) < tenantRecheck {
			return nil // applied while this call waited for its turn
		}
		// The namespace must be this company's (created by the provider
		// for it) before anything is applied to it.
		if _, err := cl.engine.ClaimApply(ctx, specs, ns, values); err != nil {
			cl.tenants.Delete(key)
			return fmt.Errorf("ensuring the tenant namespace %s: %w", ns, err)
		}
		cl.tenants.Store(key, p.Now())
		return nil
	})
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// tenantKey identifies what a tenant apply would write: the namespace and
// the tenant objects as rendered (and whether each is wanted), so a config
// change that no tenant file reads (the backend, say) does not apply the
// tenant again.
func tenantKey(specs []*resource.Resource, ns string, values map[string]any) (string, error) {
	h := sha256.New()
	h.Write([]byte(ns))
	for _, s := range specs {
		obj, wanted, err := s.Render(values)
		if err != nil {
			return "", err
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "\x00%s\x00%t\x00%s", s.Name, wanted, b)
	}
	return ns + "/" + hex.EncodeToString(h.Sum(nil)), nil
}

// flights runs one call per key at a time; callers that arrive while it
// runs wait for it and share its result.
type flights struct {
	m       sync.Map     // key -> *flight
	waiting atomic.Int32 // callers waiting for another's call
}

type flight struct {
	done chan struct{}
	err  error
}

func (f *flights) do(ctx context.Context, key string, call func() error) error {
	fl := &flight{done: make(chan struct{})}
	if v, running := f.m.LoadOrStore(key, fl); running {
		other := v.(*flight)
		f.waiting.Add(1)
		defer f.waiting.Add(-1)
		select {
		case <-other.done:
			return other.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer func() {
		f.m.Delete(key)
		close(fl.done)
	}()
	fl.err = call()
	return fl.err
}

// tenantValues are the template values of the tenant objects.
func (p *Provider) tenantValues(cfg policy.Config, companyID, ns string) map[string]any {
	v, _, _ := BuildValues(cfg, ValuesInput{CompanyID: companyID, Namespace: ns, Getenv: p.Getenv})
	return v.Map()
}

// backendServes refuses a run for which the backend file's when
// conditions fail (e.g. a warm pool that runs another adapter's image),
// with the file's refusal.
func backendServes(backend *resource.Resource, v Values, adapterType string) error {
	ok, err := backend.Wanted(v.Map())
	if err != nil || ok {
		return err
	}
	why := backend.Backend.Refusal
	if why == "" {
		why = "the conditions of its file (when) do not hold for this run"
	}
	return fmt.Errorf("backend %q cannot serve this run (adapter %q): %s (%s)", backend.Name, adapterType, why, backend.File)
}

// LeaseParams are the params of resume, release and destroy.
type LeaseParams struct {
	BaseParams
	ProviderLeaseID  *string        `json:"providerLeaseId"`
	LeaseMetadata    map[string]any `json:"leaseMetadata,omitempty"`
	CancelActiveWork bool           `json:"cancelActiveWork,omitempty"`
}

// leaseTarget says which workload a lease may touch. What it may touch
// is derived from the config and the company, never taken from the host's
// lease metadata: the namespace is the company's tenant namespace under
// this config (metadata naming another one is refused), the name must be a
// run name, and the workload is used only once ownedBy accepts its labels.
// The metadata's backend and workload UID only narrow the choice (a UID
// becomes a precondition).
func (p *Provider) leaseTarget(cfg policy.Config, companyID, id string, m LeaseMetadata) (engine.Ref, error) {
	if !policy.IsRunName(id) {
		return engine.Ref{}, rpc.Errorf(rpc.CodeInvalidParams, "providerLeaseId %q is not a lease of this provider (want %s followed by 26 lowercase letters and digits)", id, policy.RunNamePrefix)
	}
	backendName := m.Backend
	if backendName == "" {
		backendName = cfg.Backend
	}
	backend, err := p.backend(backendName)
	if err != nil {
		return engine.Ref{}, err
	}
	ns, err := p.tenantNamespace(cfg, companyID)
	if err != nil {
		return engine.Ref{}, err
	}
	if m.Namespace != "" && m.Namespace != ns {
		return engine.Ref{}, fmt.Errorf("lease %s: its metadata names namespace %q, but this company's tenant namespace under this environment's config is %q; "+
			"the lease belongs to another company or environment (or the config's namespacePrefix/companySlug changed since it was acquired), so nothing was touched", id, m.Namespace, ns)
	}
	return engine.Ref{Resource: backend, Namespace: ns, Name: id, UID: types.UID(m.WorkloadUID)}, nil
}

// ownedBy checks that a workload is this company's and this environment's:
// it carries the provider's managed-by label, the company's label and, when
// it has one (workloads of the first edition have none), the environment's.
func ownedBy(ref engine.Ref, w *unstructured.Unstructured, companyID, environmentID string) error {
	l := w.GetLabels()
	var wrong []string
	if l[policy.LabelManagedBy] != policy.ManagedByValue {
		wrong = append(wrong, fmt.Sprintf("%s is %q (want %q)", policy.LabelManagedBy, l[policy.LabelManagedBy], policy.ManagedByValue))
	}
	if want := policy.LabelValue(companyID); l[policy.LabelCompanyID] != want {
		wrong = append(wrong, fmt.Sprintf("%s is %q (want %q)", policy.LabelCompanyID, l[policy.LabelCompanyID], want))
	}
	if got, ok := l[policy.LabelEnvironmentID]; ok && got != policy.LabelValue(environmentID) {
		wrong = append(wrong, fmt.Sprintf("%s is %q (want %q)", policy.LabelEnvironmentID, got, policy.LabelValue(environmentID)))
	}
	if _, ok := l[policy.LabelRunID]; !ok {
		wrong = append(wrong, fmt.Sprintf("it is a standby no run has taken (no label %s)", policy.LabelRunID))
	}
	if len(wrong) > 0 {
		return fmt.Errorf("%s is not a workload of this company and environment (%s); refusing to use it, nothing was touched", ref, strings.Join(wrong, ", "))
	}
	return nil
}

// workload reads a lease's workload and checks that it is the company's
// (ownedBy); the returned ref is pinned to the workload's UID. A workload
// that is gone comes back as an engine.GoneError.
func (p *Provider) workload(ctx context.Context, cl *cluster, ref engine.Ref, base BaseParams) (engine.Ref, *unstructured.Unstructured, error) {
	w, err := cl.engine.Get(ctx, ref)
	if err != nil {
		return ref, nil, err
	}
	if err := ownedBy(ref, w, base.CompanyID, base.EnvironmentID); err != nil {
		return ref, nil, err
	}
	ref.UID = w.GetUID()
	return ref, w, nil
}

// requireIDs refuses a hook whose companyId (or another required id, given
// as name/value pairs) is blank: every name the provider derives starts
// from them.
func requireIDs(base BaseParams, more ...string) error {
	if strings.TrimSpace(base.CompanyID) == "" {
		return rpc.Errorf(rpc.CodeInvalidParams, "companyId is required and must not be blank: the tenant namespace and the labels of every object derive from it")
	}
	for i := 0; i+1 < len(more); i += 2 {
		if strings.TrimSpace(more[i+1]) == "" {
			return rpc.Errorf(rpc.CodeInvalidParams, "%s is required and must not be blank: the run's labels derive from it", more[i])
		}
	}
	return nil
}

// tenantNamespace is the company's tenant namespace under cfg. Besides the
// names the cluster reserves (policy.Reserved), the namespace the worker
// itself runs in is never one.
func (p *Provider) tenantNamespace(cfg policy.Config, companyID string) (string, error) {
	ns, err := cfg.Namespace(companyID)
	if err != nil {
		return "", err
	}
	if own := p.ownNamespace(); own != "" && ns == own {
		return "", fmt.Errorf("namespace %q is the namespace the Paperclip worker runs in and cannot be a tenant namespace; choose another namespacePrefix or companySlug", ns)
	}
	return ns, nil
}

// ResumeLease reports whether a lease's workload and pod still exist as
// they were; when not, it returns an expired lease for the host to replace.
func (p *Provider) ResumeLease(ctx context.Context, in LeaseParams) (Lease, error) {
	expired := func(reason string) (Lease, error) {
		var id string
		if in.ProviderLeaseID != nil {
			id = *in.ProviderLeaseID
		}
		p.Log.Info("lease expired", "lease", id, "reason", reason)
		return Lease{ProviderLeaseID: nil, Metadata: map[string]any{"expired": true, "reason": reason}}, nil
	}
	if err := requireIDs(in.BaseParams); err != nil {
		return Lease{}, err
	}
	if in.ProviderLeaseID == nil || *in.ProviderLeaseID == "" {
		return expired("the lease has no provider lease id")
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return Lease{}, err
	}
	m := metadataFrom(in.LeaseMetadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, *in.ProviderLeaseID, m)
	if err != nil {
		return Lease{}, err
	}
	cl, err := p.cluster(cfg)
	if err != nil {
		return Lease{}, err
	}
	ref, w, err := p.workload(ctx, cl, ref, in.BaseParams)
	if engine.IsGone(err) {
		return expired(err.Error())
	}
	if err != nil {
		return Lease{}, err
	}
	st := cl.engine.Status(ref.Resource, w)
	if st.State.Terminal() {
		return expired(fmt.Sprintf("%s is %s", ref, st))
	}
	if ref.Resource.Backend.Mode == resource.ModeExec {
		pod, why, err := p.resumePod(ctx, cl, ref, w, st, m)
		if err != nil {
			return Lease{}, err
		}
		if why != "" {
			return expired(why)
		}
		if pod != nil {
			m.PodName, m.PodUID = pod.GetName(), string(pod.GetUID())
		}
	}
	m.WorkloadUID = string(w.GetUID())
	// A lease kept for reuse had its deadline shortened at release: give it
	// back its own (never later than the expiry returned at acquire).
	// The deadline is read from the object already in hand: only a lease
	// whose deadline was moved costs a patch.
	if exp, err := time.Parse(time.RFC3339, m.ExpiresAt); err == nil && ref.Resource.Backend.DeadlinePath != "" && !deadlineIs(ref.Resource, w, exp) {
		if err := cl.engine.SetDeadline(ctx, ref, exp); err != nil {
			if engine.IsGone(err) {
				return expired(err.Error())
			}
			return Lease{}, err
		}
	}
	m.Phase = string(st.State)
	m.ResumedLease = true
	m.NativeFileSyncUnsupported = ref.Resource.Backend.Mode != resource.ModeExec
	p.Log.Info("lease resumed", "workload", ref.String(), "pod", m.PodName, "phase", m.Phase)
	out := Lease{ProviderLeaseID: in.ProviderLeaseID, Metadata: m.toMap()}
	if m.ExpiresAt != "" {
		out.ExpiresAt = strPtr(m.ExpiresAt)
	}
	return out, nil
}

// resumePod finds the pod of a resumed exec lease. Once the lease knows its
// pod (m.PodUID), that pod must still be there whatever the workload's
// state: while a replacement pod starts, the workload is not Ready, yet the
// lease's workspace is already lost. A workload that is only briefly not
// Ready (its controller catching up with a spec change) still has its pod:
// it is found and pinned too. It returns the pod (nil when none exists yet)
// or why the lease expired.
func (p *Provider) resumePod(ctx context.Context, cl *cluster, ref engine.Ref, w *unstructured.Unstructured, st resource.Status, m LeaseMetadata) (*unstructured.Unstructured, string, error) {
	pinned := pinnedPodUID(m, w)
	pod, err := cl.engine.FindPod(ctx, ref.Resource, w)
	switch {
	case errors.Is(err, engine.ErrNoPod) && pinned != "":
		return nil, fmt.Sprintf("the pod of %s is gone (pod UID %s); its workspace is lost", ref, pinned), nil
	case errors.Is(err, engine.ErrNoPod) && st.State == resource.Ready:
		return nil, err.Error(), nil
	case errors.Is(err, engine.ErrNoPod):
		return nil, "", nil // not created yet: the lease is still usable
	case err != nil:
		return nil, "", err
	}
	if pinned != "" && string(pod.GetUID()) != pinned {
		return nil, fmt.Sprintf("the pod of %s was replaced (pod UID %s is gone); its workspace is lost", ref, pinned), nil
	}
	if podSpec, ok := p.Catalog.Pod(); ok {
		if ps := cl.engine.Status(podSpec, pod); ps.State.Terminal() {
			return nil, fmt.Sprintf("the pod %s/%s of %s is %s", ref.Namespace, pod.GetName(), ref, ps), nil
		}
	}
	return pod, "", nil
}

// deadlineIs reports whether a workload's deadline is already t.
func deadlineIs(s *resource.Resource, w *unstructured.Unstructured, t time.Time) bool {
	cur, ok := s.Deadline(w)
	return ok && cur.Equal(t)
}

// Receipt is the host's PluginEnvironmentTerminationReceipt.
type Receipt struct {
	ProviderLeaseID string `json:"providerLeaseId"`
	State           string `json:"state"`
}

// ReleaseLease deletes the lease's workload (UID-pinned); its pod, Secret
// and scoped policies go with it through their ownerReferences. Releasing a
// lease whose workload is gone is success.
//
// A lease the host will resume is the exception: the workload of an exec
// backend stays as it is (a pod cannot be stopped and started again with
// its workspace), so that the next run's environmentResumeLease finds it.
// Nothing in the release's params says whether the host will resume: it
// stores every lease of reuseLease: true as reuse_by_environment, marks
// every one with an execution workspace and an agent with the scope
// "reusableSandboxLease" (in the metadata it sends back), and sends the same
// params either way. What decides is the lease's issue: a later run resumes
// the lease only when it runs in the same execution workspace, that is when
// the issue is bound to it (its executionWorkspaceId) and asks to reuse it
// (executionWorkspacePreference "reuse_existing"); otherwise each run gets a
// new execution workspace and the lease is never resumed. So the release
// asks the host for the issue (issues.get, capability issues.read) and keeps
// the workload only when it says so (see reuseDenied); any other answer,
// an error or no answer within hostReuseQueryTimeout releases. A kept lease
// is later resumed or destroyed (environmentDestroyLease: stale or expired
// lease, closed issue, archived execution workspace, environment delete).
// cancelActiveWork always deletes. A kept workload ends at
// reusableLeaseIdleSec from its release unless a resume restores its own
// deadline first.
func (p *Provider) ReleaseLease(ctx context.Context, in LeaseParams) (*Receipt, error) {
	return p.terminate(ctx, in, "stopped", false)
}

// keptForReuse reports whether a release may keep the lease's workload for
// a later resume (see ReleaseLease): the host published it for reuse
// (reuseLease, the reusableSandboxLease scope), the backend execs, and the
// host does not cancel the run's work. Whether the host will resume it is
// reuseDenied's question.
func keptForReuse(in LeaseParams, ref engine.Ref) bool {
	_, scoped := in.LeaseMetadata["reusableSandboxLease"].(map[string]any)
	return scoped && in.Config["reuseLease"] == true && !in.CancelActiveWork && ref.Resource.Backend.Mode == resource.ModeExec
}

// hostReuseQueryTimeout bounds the release's question to the host (one
// database read there); a host that does not answer in time gets the
// workload released.
const hostReuseQueryTimeout = 5 * time.Second

// methodIssuesGet is the worker→host request that reads an issue
// ({issueId, companyId} → the issue, or null); it needs the capability
// issues.read, which the manifest declares.
const methodIssuesGet = "issues.get"

// reuseIssue is what a release reads of the lease's issue.
type reuseIssue struct {
	CompanyID                    string  `json:"companyId"`
	Status                       string  `json:"status"`
	ExecutionWorkspaceID         *string `json:"executionWorkspaceId"`
	ExecutionWorkspacePreference *string `json:"executionWorkspacePreference"`
}

// reuseDenied asks the host whether a later run will resume the lease: its
// issue (the release's issueId) must be this company's, open, bound to the
// execution workspace of the lease's scope and ask to reuse it
// (executionWorkspacePreference "reuse_existing"), as the host requires
// before it resumes a lease. It returns "" when so, else why not (for the
// log) and whether that is because the host did not answer the question
// (an error, a refusal, no answer in time). The answer only decides whether
// the provider's own workload is kept a while longer: what the release may
// touch is derived as for any release.
func reuseDenied(ctx context.Context, in LeaseParams) (why string, hostFailed bool) {
	scope, _ := in.LeaseMetadata["reusableSandboxLease"].(map[string]any)
	ws, _ := scope["executionWorkspaceId"].(string)
	if ws == "" {
		return "the lease's reusableSandboxLease scope names no execution workspace", false
	}
	issueID := issueOf(in)
	if issueID == "" {
		return "the release names no issue: no run comes back to the execution workspace " + ws, false
	}
	ctx, cancel := context.WithTimeout(ctx, hostReuseQueryTimeout)
	defer cancel()
	raw, err := rpc.Call(ctx, methodIssuesGet, map[string]any{"issueId": issueID, "companyId": in.CompanyID})
	var re *rpc.Error
	switch {
	case errors.As(err, &re) && re.Code == rpc.CodeCapabilityDenied:
		return fmt.Sprintf("the host refused %s for issue %s (%s): the installed plugin lacks the capability issues.read; "+
			"reinstall the package (its manifest declares it) or approve the capability", methodIssuesGet, issueID, re.Message), true
	case err != nil:
		return fmt.Sprintf("asking the host for issue %s failed: %v", issueID, err), true
	}
	var issue *reuseIssue
	if err := json.Unmarshal(raw, &issue); err != nil {
		return fmt.Sprintf("the host's answer for issue %s is not an issue: %v", issueID, err), true
	}
	switch {
	case issue == nil || issue.CompanyID != in.CompanyID:
		return fmt.Sprintf("the host knows no issue %s of company %s", issueID, in.CompanyID), false
	case issue.Status == "done" || issue.Status == "cancelled":
		return fmt.Sprintf("issue %s is %s", issueID, issue.Status), false
	case issue.ExecutionWorkspacePreference == nil || *issue.ExecutionWorkspacePreference != "reuse_existing":
		return fmt.Sprintf("issue %s does not ask to reuse its execution workspace (executionWorkspacePreference %s, want \"reuse_existing\"): "+
			"its next run gets a new execution workspace", issueID, quoteOrNull(issue.ExecutionWorkspacePreference)), false
	case issue.ExecutionWorkspaceID == nil || *issue.ExecutionWorkspaceID != ws:
		return fmt.Sprintf("issue %s is bound to execution workspace %s, not the lease's %s", issueID, quoteOrNull(issue.ExecutionWorkspaceID), ws), false
	}
	return "", false
}

// issueOf is the release's issue id ("" when it names none).
func issueOf(in LeaseParams) string {
	if in.IssueID == nil {
		return ""
	}
	return *in.IssueID
}

func quoteOrNull(s *string) string {
	if s == nil {
		return "null"
	}
	return fmt.Sprintf("%q", *s)
}

// DestroyLease is ReleaseLease that also deletes the run objects directly,
// for clusters whose garbage collector is slow or absent.
func (p *Provider) DestroyLease(ctx context.Context, in LeaseParams) (*Receipt, error) {
	return p.terminate(ctx, in, "destroyed", true)
}

func (p *Provider) terminate(ctx context.Context, in LeaseParams, state string, direct bool) (*Receipt, error) {
	if err := requireIDs(in.BaseParams); err != nil {
		return nil, err
	}
	if in.ProviderLeaseID == nil || *in.ProviderLeaseID == "" {
		return nil, nil
	}
	id := *in.ProviderLeaseID
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return nil, err
	}
	m := metadataFrom(in.LeaseMetadata)
	ref, err := p.leaseTarget(cfg, in.CompanyID, id, m)
	if err != nil {
		return nil, err
	}
	cl, err := p.cluster(cfg)
	if err != nil {
		return nil, err
	}
	ref, _, err = p.workload(ctx, cl, ref, in.BaseParams)
	var missing *engine.APIMissingError
	if engine.IsGone(err) || errors.As(err, &missing) {
		// Already gone (or replaced by another object of that name, or its
		// API removed with all its objects): released; run objects went
		// with it through their owner.
		p.forget(ref)
		p.Log.Info("lease "+state, "workload", ref.String(), "deleted", false)
		return &Receipt{ProviderLeaseID: id, State: state}, nil
	}
	if err != nil {
		return nil, err
	}
	p.forget(ref)
	keep := !direct && keptForReuse(in, ref)
	var notKept string
	if keep {
		var hostFailed bool
		notKept, hostFailed = reuseDenied(ctx, in)
		if hostFailed {
			p.Log.Warn("lease reuse: the host did not say whether it will resume the lease; releasing it", "workload", ref.String(), "reason", notKept)
		}
		keep = notKept == ""
	}
	if keep {
		// The host may never come back (it does not resume the lease of a
		// failed run): end the workload after reusableLeaseIdleSec unless a
		// resume restores its deadline first.
		until := p.Now().Add(time.Duration(cfg.ReusableLeaseIdleSec) * time.Second)
		if exp, err := time.Parse(time.RFC3339, m.ExpiresAt); err == nil && exp.Before(until) {
			until = exp
		}
		if ref.Resource.Backend.DeadlinePath != "" {
			if err := cl.engine.SetDeadline(ctx, ref, until); err != nil && !engine.IsGone(err) {
				return nil, err
			}
		}
		p.Log.Info("lease kept for reuse", "workload", ref.String(), "issueId", issueOf(in), "idleUntil", until.UTC().Format(time.RFC3339))
		return nil, nil // nothing was stopped: no termination receipt
	}
	if direct {
		// Before the workload, while its UID says which run objects are
		// its own: only objects it controls are deleted.
		for _, ro := range m.RunObjects {
			specName, objName, ok := strings.Cut(ro, "/")
			s, found := p.Catalog.Get(specName)
			if !ok || !found || s.Use != resource.UseRun {
				continue
			}
			if _, err := cl.engine.ReleaseOwned(ctx, engine.Ref{Resource: s, Namespace: ref.Namespace, Name: objName}, ref.UID); err != nil {
				return nil, err
			}
		}
	}
	deleted, err := cl.engine.Release(ctx, ref)
	if err != nil {
		return nil, err
	}
	if notKept != "" {
		p.Log.Info("lease "+state, "workload", ref.String(), "deleted", deleted, "notKeptForReuse", notKept)
		return &Receipt{ProviderLeaseID: id, State: state}, nil
	}
	p.Log.Info("lease "+state, "workload", ref.String(), "deleted", deleted)
	return &Receipt{ProviderLeaseID: id, State: state}, nil
}

// RealizeParams are environmentRealizeWorkspace's params.
type RealizeParams struct {
	BaseParams
	Lease     Lease `json:"lease"`
	Workspace struct {
		LocalPath  string         `json:"localPath,omitempty"`
		RemotePath string         `json:"remotePath,omitempty"`
		Mode       string         `json:"mode,omitempty"`
		Metadata   map[string]any `json:"metadata,omitempty"`
	} `json:"workspace"`
}

// RealizeResult is environmentRealizeWorkspace's result.
type RealizeResult struct {
	Cwd      string         `json:"cwd"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

// RealizeWorkspace picks the working directory (the host's remote path,
// else the lease's remoteCwd, else the configured workspacePath) and, on
// exec backends, waits for the lease's workload and pod to be ready: the
// host gives this call max(timeoutMs, bridgeRequestTimeoutMs) + 30 s, while
// its first command (a Git-context read) has a fixed 15 s. A pod that will
// not start (an image that cannot be pulled, say) fails it at once, naming
// the workload, the pod, the reason and the fix.
func (p *Provider) RealizeWorkspace(ctx context.Context, in RealizeParams) (RealizeResult, error) {
	if err := requireIDs(in.BaseParams); err != nil {
		return RealizeResult{}, err
	}
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return RealizeResult{}, err
	}
	m := metadataFrom(in.Lease.Metadata)
	cwd := strings.TrimSpace(in.Workspace.RemotePath)
	if cwd == "" {
		cwd = m.RemoteCwd
	}
	if cwd == "" {
		cwd = cfg.WorkspacePath
	}
	out := RealizeResult{Cwd: cwd, Metadata: map[string]any{"provider": "kubernetes", "remoteCwd": cwd}}
	if in.Lease.ProviderLeaseID == nil || *in.Lease.ProviderLeaseID == "" {
		return out, nil
	}
	ref, err := p.leaseTarget(cfg, in.CompanyID, *in.Lease.ProviderLeaseID, m)
	if err != nil {
		return RealizeResult{}, err
	}
	if ref.Resource.Backend.Mode != resource.ModeExec {
		return out, nil // the workload runs to completion: execute awaits it
	}
	cl, err := p.cluster(cfg)
	if err != nil {
		return RealizeResult{}, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(cfg.PodActivityDeadlineSec)*time.Second)
		defer cancel()
	}
	start := time.Now()
	st, err := p.readyPod(ctx, cl, ref, in.BaseParams, m)
	if err != nil {
		var we *engine.WaitError
		if errors.As(err, &we) && errors.Is(err, context.DeadlineExceeded) {
			return RealizeResult{}, fmt.Errorf("%s was not ready within the time the host gives a workspace realization (%s; raise timeoutMs in the environment config to wait longer); last status: %s",
				ref, time.Since(start).Round(time.Second), we.Last)
		}
		return RealizeResult{}, err
	}
	out.Metadata["podName"] = st.podName
	p.Log.Info("workspace ready", "workload", ref.String(), "pod", st.podName, "waited", time.Since(start).Round(time.Millisecond))
	return out, nil
}
