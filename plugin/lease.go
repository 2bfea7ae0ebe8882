package plugin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
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
	cfg, err := p.parseConfig(in.Config)
	if err != nil {
		return Lease{}, err
	}
	backend, err := p.backend(cfg.Backend)
	if err != nil {
		return Lease{}, err
	}
	ns, err := cfg.Namespace(in.CompanyID)
	if err != nil {
		return Lease{}, err
	}
	adapterType := policy.ResolveAdapterType(in.AdapterType, cfg.AdapterType)
	adapter, err := policy.Defaults(adapterType, cfg.Adapters)
	if err != nil {
		return Lease{}, err
	}
	image, err := policy.ResolveImage("", adapter.RuntimeImage, cfg.ImageAllowList, cfg.ImageRegistry)
	if err != nil {
		return Lease{}, err
	}
	lifetime := cfg.PodActivityDeadlineSec
	if backend.Backend.Mode == engine.ModeExec {
		lifetime = cfg.SandboxLifetimeSec
	}
	now := p.Now()
	requested := ""
	if in.RequestedExpiresAt != nil {
		requested = *in.RequestedExpiresAt
	}
	deadline, err := policy.LeaseDeadline(now, requested, lifetime)
	if err != nil {
		return Lease{}, err
	}
	grant, grantWarnings := policy.ParseEgressGrant(in.ExecutionWorkspaceSettings)
	for _, w := range grantWarnings {
		p.Log.Warn("task egress grant", "companyId", in.CompanyID, "warning", w)
	}
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

	name := policy.NewRunName()
	env := policy.AdapterEnv(adapter, p.Getenv)
	if _, ok := env["BOOTSTRAP_TOKEN"]; ok {
		return Lease{}, fmt.Errorf("adapter %q sets BOOTSTRAP_TOKEN in defaultEnv or envKeys; that name is reserved for the provider", adapterType)
	}
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return Lease{}, err
	}
	env["BOOTSTRAP_TOKEN"] = hex.EncodeToString(token)
	for k, v := range policy.EgressEnv(grant) {
		env[k] = v
	}
	runGrant := map[string]any{
		"fqdns": union(adapter.AllowFqdns, grant.AllowFqdns),
		"cidrs": grant.AllowCidrs,
	}
	runGrant["any"] = len(runGrant["fqdns"].([]string))+len(grant.AllowCidrs) > 0
	labels := policy.Labels(policy.RunIdentity{RunID: in.RunID, AgentID: in.AgentID, CompanyID: in.CompanyID, AdapterType: adapterType})
	values := maps.Clone(tenant)
	values["grant"] = runGrant
	values["run"] = map[string]any{
		"id":               policy.LabelValue(in.RunID),
		"name":             name,
		"secretName":       name + "-env",
		"egressPolicyName": name + "-egress", // see ScopedNetworkPolicyName below
		"labels":           labels,
		"image":            image,
		"resources":        cfg.DefaultResources,
		"env":              env,
		"deadlineSeconds":  int64(math.Ceil(deadline.Sub(now).Seconds())),
		"deadlineTime":     deadline.UTC().Format(time.RFC3339),
	}

	workload, err := cl.engine.Create(ctx, backend, ns, values, nil)
	if apierrors.IsNotFound(err) {
		// The tenant was applied earlier but is gone (deleted by hand):
		// apply it again and claim once more.
		if err = p.ensureTenant(ctx, cl, ns, tenant, true); err == nil {
			workload, err = cl.engine.Create(ctx, backend, ns, values, nil)
		}
	}
	if err != nil {
		return Lease{}, err
	}
	meta := LeaseMetadata{
		Provider: "kubernetes", Namespace: ns, Backend: backend.Name,
		WorkloadName: name, WorkloadAPIVersion: workload.GetAPIVersion(), WorkloadKind: workload.GetKind(),
		WorkloadUID: string(workload.GetUID()), SandboxName: name, SecretName: name + "-env",
		ScopedNetworkEgress: grant, RemoteCwd: cfg.WorkspacePath, ExpiresAt: deadline.UTC().Format(time.RFC3339),
		Phase: "Pending", NativeFileSyncUnsupported: backend.Backend.Mode != engine.ModeExec,
	}
	var created []engine.Ref
	for _, s := range p.Catalog.Scoped(engine.ScopeRun) {
		o, err := cl.engine.Create(ctx, s, ns, values, workload)
		if err != nil {
			return Lease{}, p.undoAcquire(cl, backend, workload, created, err)
		}
		if o == nil {
			continue // not wanted under this config
		}
		created = append(created, engine.RefOf(s, o))
		meta.RunObjects = append(meta.RunObjects, s.Name+"/"+o.GetName())
		if o.GetName() == name+"-egress" {
			meta.ScopedNetworkPolicyName = o.GetName()
		}
	}
	p.Log.Info("lease acquired", "companyId", in.CompanyID, "runId", in.RunID, "workload", engine.RefOf(backend, workload).String(),
		"backend", backend.Name, "expiresAt", meta.ExpiresAt)
	exp := meta.ExpiresAt
	return Lease{ProviderLeaseID: strPtr(name), Metadata: meta.toMap(), ExpiresAt: &exp}, nil
}

// undoAcquire deletes what a failed acquire created, newest first, and
// returns an error that says what failed and whether cleanup was complete.
func (p *Provider) undoAcquire(cl *cluster, backend *engine.Spec, workload *unstructured.Unstructured, created []engine.Ref, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
	b, err := json.Marshal(values)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	key := ns + "/" + hex.EncodeToString(sum[:])
	if t, ok := cl.tenants.Load(key); ok && !force && p.Now().Sub(t.(time.Time)) < tenantRecheck {
		return nil
	}
	if _, err := cl.engine.Apply(ctx, p.Catalog.Scoped(engine.ScopeTenant), ns, values); err != nil {
		cl.tenants.Delete(key)
		return fmt.Errorf("ensuring the tenant namespace %s: %w", ns, err)
	}
	cl.tenants.Store(key, p.Now())
	return nil
}

// tenantValues are the template values of the tenant objects.
func (p *Provider) tenantValues(cfg policy.Config, companyID, ns string) map[string]any {
	var config map[string]any
	b, _ := json.Marshal(cfg)
	_ = json.Unmarshal(b, &config)
	delete(config, "kubeconfig")
	return map[string]any{
		"namespace": ns,
		"companyId": companyID,
		"tenantLabels": map[string]string{
			policy.LabelCompanyID: policy.LabelValue(companyID),
			policy.LabelManagedBy: policy.ManagedByValue,
		},
		"config": config,
		"egress": map[string]any{"fqdns": cfg.EgressAllowFqdns, "cidrs": cfg.EgressAllowCidrs},
	}
}

// LeaseParams are the params of resume, release and destroy.
type LeaseParams struct {
	BaseParams
	ProviderLeaseID  *string        `json:"providerLeaseId"`
	LeaseMetadata    map[string]any `json:"leaseMetadata,omitempty"`
	CancelActiveWork bool           `json:"cancelActiveWork,omitempty"`
}

// leaseTarget reads what a lease points at: its namespace, backend spec and
// workload reference (UID-pinned when the metadata has it).
func (p *Provider) leaseTarget(cfg policy.Config, companyID, id string, m LeaseMetadata) (engine.Ref, error) {
	backendName := m.Backend
	if backendName == "" {
		backendName = cfg.Backend
	}
	backend, err := p.backend(backendName)
	if err != nil {
		return engine.Ref{}, err
	}
	ns := m.Namespace
	if ns == "" {
		if ns, err = cfg.Namespace(companyID); err != nil {
			return engine.Ref{}, err
		}
	}
	return engine.Ref{Spec: backend, Namespace: ns, Name: id, UID: types.UID(m.WorkloadUID)}, nil
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
	w, err := cl.engine.Get(ctx, ref)
	if engine.IsGone(err) {
		return expired(err.Error())
	}
	if err != nil {
		return Lease{}, err
	}
	st := cl.engine.Status(ref.Spec, w)
	if st.State.Terminal() {
		return expired(fmt.Sprintf("%s is %s", ref, st))
	}
	if ref.Spec.Backend.Mode == engine.ModeExec {
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
	if exp, err := time.Parse(time.RFC3339, m.ExpiresAt); err == nil && ref.Spec.Backend.DeadlinePath != "" && !deadlineIs(ref.Spec, w, exp) {
		ref.UID = w.GetUID()
		if err := cl.engine.SetDeadline(ctx, ref, exp); err != nil {
			if engine.IsGone(err) {
				return expired(err.Error())
			}
			return Lease{}, err
		}
	}
	m.Phase = string(st.State)
	m.ResumedLease = true
	m.NativeFileSyncUnsupported = ref.Spec.Backend.Mode != engine.ModeExec
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
func (p *Provider) resumePod(ctx context.Context, cl *cluster, ref engine.Ref, w *unstructured.Unstructured, st engine.Status, m LeaseMetadata) (*unstructured.Unstructured, string, error) {
	pod, err := cl.engine.FindPod(ctx, ref.Spec, w)
	switch {
	case errors.Is(err, engine.ErrNoPod) && m.PodUID != "":
		return nil, fmt.Sprintf("the pod of %s is gone (pod UID %s); its workspace is lost", ref, m.PodUID), nil
	case errors.Is(err, engine.ErrNoPod) && st.State == engine.Ready:
		return nil, err.Error(), nil
	case errors.Is(err, engine.ErrNoPod):
		return nil, "", nil // not created yet: the lease is still usable
	case err != nil:
		return nil, "", err
	}
	if m.PodUID != "" && string(pod.GetUID()) != m.PodUID {
		return nil, fmt.Sprintf("the pod of %s was replaced (pod UID %s is gone); its workspace is lost", ref, m.PodUID), nil
	}
	if podSpec, ok := p.Catalog.Pod(); ok {
		if ps := cl.engine.Status(podSpec, pod); ps.State.Terminal() {
			return nil, fmt.Sprintf("the pod %s/%s of %s is %s", ref.Namespace, pod.GetName(), ref, ps), nil
		}
	}
	return pod, "", nil
}

// deadlineIs reports whether a workload's deadline is already t.
func deadlineIs(s *engine.Spec, w *unstructured.Unstructured, t time.Time) bool {
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
// A lease the host keeps for reuse is the exception: the workload of an
// exec backend stays as it is (a pod cannot be stopped and started again
// with its workspace), so that the next run's environmentResumeLease finds
// it. The host publishes a lease for reuse only with reuseLease: true and
// an execution workspace and agent to scope it to; it then records the
// scope under "reusableSandboxLease" in the lease metadata, and later
// either resumes the lease or destroys it (environmentDestroyLease: stale
// or expired lease, closed issue, archived execution workspace, environment
// delete). cancelActiveWork always deletes. The workload's own deadline
// (sandboxLifetimeSec) bounds a kept lease the host never comes back to.
func (p *Provider) ReleaseLease(ctx context.Context, in LeaseParams) (*Receipt, error) {
	return p.terminate(ctx, in, "stopped", false)
}

// keptForReuse reports whether a release keeps the lease's workload for a
// later resume (see ReleaseLease).
func keptForReuse(in LeaseParams, ref engine.Ref) bool {
	_, scoped := in.LeaseMetadata["reusableSandboxLease"].(map[string]any)
	return scoped && in.Config["reuseLease"] == true && !in.CancelActiveWork && ref.Spec.Backend.Mode == engine.ModeExec
}

// DestroyLease is ReleaseLease that also deletes the run objects directly,
// for clusters whose garbage collector is slow or absent.
func (p *Provider) DestroyLease(ctx context.Context, in LeaseParams) (*Receipt, error) {
	return p.terminate(ctx, in, "destroyed", true)
}

func (p *Provider) terminate(ctx context.Context, in LeaseParams, state string, direct bool) (*Receipt, error) {
	if in.ProviderLeaseID == nil || *in.ProviderLeaseID == "" {
		return nil, nil
	}
	id := *in.ProviderLeaseID
	p.forget(id)
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
	if !direct && keptForReuse(in, ref) {
		// The host may never come back (it does not resume the lease of a
		// failed run): end the workload after reusableLeaseIdleSec unless a
		// resume restores its deadline first.
		until := p.Now().Add(time.Duration(cfg.ReusableLeaseIdleSec) * time.Second)
		if exp, err := time.Parse(time.RFC3339, m.ExpiresAt); err == nil && exp.Before(until) {
			until = exp
		}
		if ref.Spec.Backend.DeadlinePath != "" {
			if err := cl.engine.SetDeadline(ctx, ref, until); err != nil && !engine.IsGone(err) {
				return nil, err
			}
		}
		p.Log.Info("lease kept for reuse", "workload", ref.String(), "idleUntil", until.UTC().Format(time.RFC3339))
		return nil, nil // nothing was stopped: no termination receipt
	}
	deleted, err := cl.engine.Release(ctx, ref)
	if err != nil {
		return nil, err
	}
	if direct {
		for _, ro := range m.RunObjects {
			specName, objName, ok := strings.Cut(ro, "/")
			s, found := p.Catalog.Get(specName)
			if !ok || !found {
				continue
			}
			if _, err := cl.engine.Release(ctx, engine.Ref{Spec: s, Namespace: ref.Namespace, Name: objName}); err != nil {
				return nil, err
			}
		}
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

// RealizeWorkspace picks the working directory: the host's remote path,
// else the lease's remoteCwd, else the configured workspacePath.
func (p *Provider) RealizeWorkspace(_ context.Context, in RealizeParams) (RealizeResult, error) {
	cwd := strings.TrimSpace(in.Workspace.RemotePath)
	if cwd == "" {
		cwd = metadataFrom(in.Lease.Metadata).RemoteCwd
	}
	if cwd == "" {
		cfg, err := p.parseConfig(in.Config)
		if err != nil {
			return RealizeResult{}, err
		}
		cwd = cfg.WorkspacePath
	}
	return RealizeResult{Cwd: cwd, Metadata: map[string]any{"provider": "kubernetes", "remoteCwd": cwd}}, nil
}
