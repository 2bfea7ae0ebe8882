package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// ValidateParams are environmentValidateConfig's params.
type ValidateParams struct {
	DriverKey string         `json:"driverKey"`
	Config    map[string]any `json:"config"`
}

// ValidateResult is environmentValidateConfig's result.
type ValidateResult struct {
	OK               bool           `json:"ok"`
	Errors           []string       `json:"errors,omitempty"`
	Warnings         []string       `json:"warnings,omitempty"`
	NormalizedConfig map[string]any `json:"normalizedConfig,omitempty"`
}

// ValidateConfig checks a config against schemas/config.schema.json and the
// cross-field rules; every error names its field.
func (p *Provider) ValidateConfig(_ context.Context, in ValidateParams) (ValidateResult, error) {
	_, norm, warns, errs := policy.Validate(in.Config, p.Catalog.BackendNames(), p.policyOptions()...)
	if len(errs) > 0 {
		return ValidateResult{OK: false, Errors: policy.FieldErrors(errs).Strings(), Warnings: warns}, nil
	}
	return ValidateResult{OK: true, Warnings: warns, NormalizedConfig: norm}, nil
}

// Diagnostic is one finding of a probe.
type Diagnostic struct {
	Severity string         `json:"severity"`
	Message  string         `json:"message"`
	Code     string         `json:"code,omitempty"`
	Details  map[string]any `json:"details,omitempty"`
}

// ProbeResult is environmentProbe's result.
type ProbeResult struct {
	OK          bool           `json:"ok"`
	Summary     string         `json:"summary"`
	Diagnostics []Diagnostic   `json:"diagnostics,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty"`
}

// Probe checks that the cluster answers, that it serves the backend's API,
// and, with SelfSubjectAccessReviews, that every permission the provider
// needs is granted; each missing one is a diagnostic.
func (p *Provider) Probe(ctx context.Context, in BaseParams) (ProbeResult, error) {
	cfg, _, _, errs := policy.Validate(in.Config, p.Catalog.BackendNames(), p.policyOptions()...)
	if len(errs) > 0 {
		return ProbeResult{OK: false, Summary: "Invalid Kubernetes provider configuration.",
			Metadata: map[string]any{"errors": policy.FieldErrors(errs).Strings()}}, nil
	}
	if err := requireIDs(in); err != nil {
		return ProbeResult{}, err
	}
	ns, err := p.tenantNamespace(cfg, in.CompanyID)
	if err != nil {
		return ProbeResult{OK: false, Summary: "Invalid Kubernetes provider configuration.", Metadata: map[string]any{"errors": []string{err.Error()}}}, nil
	}
	meta := map[string]any{"provider": "kubernetes", "namespace": ns, "backend": cfg.Backend}
	fail := func(summary string, d ...Diagnostic) (ProbeResult, error) {
		return ProbeResult{OK: false, Summary: summary, Diagnostics: d, Metadata: meta}, nil
	}
	cl, err := p.cluster(cfg)
	if err != nil {
		return fail("Kubernetes cluster probe failed.", Diagnostic{Severity: "error", Code: "credentials", Message: err.Error()})
	}
	var v version.Info
	raw, err := cl.kube.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err == nil {
		err = json.Unmarshal(raw, &v)
	}
	if err != nil {
		return fail("Kubernetes cluster probe failed.", Diagnostic{Severity: "error", Code: "unreachable", Message: "the API server did not answer: " + err.Error()})
	}
	meta["serverVersion"] = v.GitVersion
	var diags []Diagnostic
	ok := true
	backend, err := p.backend(cfg.Backend)
	if err != nil {
		return fail("Kubernetes cluster probe failed.", Diagnostic{Severity: "error", Code: "backend", Message: err.Error()})
	}
	if d, warn := p.execNote(backend); warn {
		diags = append(diags, d)
	}
	cl.engine.Forget(backend) // a probe always asks the API server
	if r, err := cl.engine.Resolve(backend); err != nil {
		ok = false
		diags = append(diags, Diagnostic{Severity: "error", Code: "api-missing", Message: err.Error()})
	} else {
		meta["backendApiVersion"] = r.GVK.GroupVersion().String()
	}
	// The other APIs the backend needs under this config: the objects its
	// pods are found through, and the tenant objects it wants (a warm
	// pool's template and pool).
	for _, s := range p.neededAPIs(cfg, in.CompanyID, ns, backend) {
		cl.engine.Forget(s)
		if _, err := cl.engine.Resolve(s); err != nil {
			ok = false
			diags = append(diags, Diagnostic{Severity: "error", Code: "api-missing", Message: err.Error()})
		}
	}
	// Every version of the backend's API the server serves, for the
	// operator (e.g. agent-sandbox v1beta1 and the deprecated v1alpha1).
	var served []string
	for _, v := range backend.API.Versions {
		gv := v
		if backend.API.Group != "" {
			gv = backend.API.Group + "/" + v
		}
		path := "/apis/" + gv
		if backend.API.Group == "" {
			path = "/api/" + gv
		}
		if err := cl.kube.Discovery().RESTClient().Get().AbsPath(path).Do(ctx).Error(); err == nil {
			served = append(served, gv)
		}
	}
	meta["backendApiVersionsServed"] = served
	for _, d := range p.accessReviews(ctx, cl, cfg, ns) {
		if d.Severity == "error" {
			ok = false
		}
		diags = append(diags, d)
	}
	summary := fmt.Sprintf("Kubernetes cluster reachable (%s). Tenant namespace: %s.", v.GitVersion, ns)
	if !ok {
		summary = fmt.Sprintf("Kubernetes cluster reachable (%s), but the provider cannot work there yet: see diagnostics.", v.GitVersion)
	}
	return ProbeResult{OK: ok, Summary: summary, Diagnostics: diags, Metadata: meta}, nil
}

// neededAPIs are the files besides the backend whose APIs a run on it
// needs under cfg: its via resources and the tenant files wanted under
// cfg, other than the core and RBAC APIs every cluster serves, once each.
func (p *Provider) neededAPIs(cfg policy.Config, companyID, ns string, backend *resource.Resource) []*resource.Resource {
	var out []*resource.Resource
	seen := map[string]bool{backend.API.Group + "/" + backend.API.Resource: true}
	add := func(s *resource.Resource) {
		if s.API == nil || seen[s.API.Group+"/"+s.API.Resource] {
			return
		}
		k := s.API.Group + "/" + s.API.Resource
		seen[k] = true
		out = append(out, s)
	}
	for _, s := range p.Catalog.ViaResources(backend) {
		add(s)
	}
	values := p.tenantValues(cfg, companyID, ns)
	for _, s := range p.Catalog.Used(resource.UseTenant) {
		if s.API == nil || !strings.Contains(s.API.Group, ".") || strings.HasSuffix(s.API.Group, ".k8s.io") {
			continue // core and */k8s.io APIs: served by every cluster
		}
		if wanted, err := s.Wanted(values); err == nil && wanted {
			add(s)
		}
	}
	return out
}

// execNote is a warning for a backend that does not run commands in a
// pod (mode logs: execute returns the workload's log): Paperclip's agent
// runs run many commands in their workspace, which needs an exec backend.
func (p *Provider) execNote(backend *resource.Resource) (Diagnostic, bool) {
	if backend.Backend.Mode == resource.ModeExec {
		return Diagnostic{}, false
	}
	exec := []string{}
	var quoted []string
	for _, name := range p.Catalog.BackendNames() {
		if s, err := p.backend(name); err == nil && s.Backend.Mode == resource.ModeExec && !slices.Contains(exec, s.Name) {
			exec = append(exec, s.Name) // an alias counts as its backend
			quoted = append(quoted, fmt.Sprintf("%q", s.Name))
		}
	}
	use := "no loaded backend runs commands in a pod: add one (mode: exec) to resources/"
	if len(exec) > 0 {
		use = "use backend " + strings.Join(quoted, " or ") + " (mode exec: commands run in the pod through pods/exec) for agent runs"
	}
	return Diagnostic{Severity: "warning", Code: "backend-not-exec", Message: fmt.Sprintf(
		"backend %q (mode %s) runs the workload to completion and answers every command with its pod's log: "+
			"agent runs, which run commands in their workspace, fail at setup on it (the host reports setup_failed); %s. "+
			"It suits one-shot jobs only", backend.Name, backend.Backend.Mode, use),
		Details: map[string]any{"backend": backend.Name, "mode": backend.Backend.Mode, "execBackends": exec}}, true
}

// accessReviews asks the API server, with SelfSubjectAccessReviews,
// whether the provider's identity holds what `paperclip-k8s rbac` grants:
// the cluster-wide ClusterRole's rules (bind on the tenant ClusterRole
// included), then the tenant ClusterRole's namespaced rules in the tenant
// namespace. Those come with the provider's RoleBinding there, which
// acquire applies with the tenant: while it does not exist, missing
// namespaced permissions are one note, not errors.
func (p *Provider) accessReviews(ctx context.Context, cl *cluster, cfg policy.Config, ns string) []Diagnostic {
	type check struct {
		group, resource, sub, verb, ns, name string
		tenant                               bool
	}
	split := func(resource string) (string, string) {
		res, sub, _ := strings.Cut(resource, "/")
		return res, sub
	}
	var checks []check
	clusterRules, err := p.ClusterRules()
	if err != nil {
		return []Diagnostic{{Severity: "error", Code: "resources", Message: err.Error()}}
	}
	for _, r := range clusterRules {
		for _, g := range r.APIGroups {
			for _, resource := range r.Resources {
				if g == "authorization.k8s.io" && resource == "selfsubjectaccessreviews" {
					continue // this very call
				}
				res, sub := split(resource)
				names := r.ResourceNames
				if len(names) == 0 {
					names = []string{""}
				}
				for _, v := range r.Verbs {
					for _, n := range names {
						checks = append(checks, check{group: g, resource: res, sub: sub, verb: v, name: n})
					}
				}
			}
		}
	}
	for _, r := range p.TenantRules() {
		for _, g := range r.APIGroups {
			for _, resource := range r.Resources {
				s := p.specFor(g, resource)
				if s == nil {
					continue
				}
				if _, err := cl.engine.Resolve(s); err != nil {
					continue // an API the cluster does not serve (e.g. Cilium in standard mode)
				}
				res, sub := split(resource)
				for _, v := range r.Verbs {
					checks = append(checks, check{group: g, resource: res, sub: sub, verb: v, ns: ns, tenant: true})
				}
			}
		}
	}
	out := make([]Diagnostic, len(checks))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			what := c.resource
			if c.sub != "" {
				what += "/" + c.sub
			}
			if c.group != "" {
				what += "." + c.group
			}
			if c.name != "" {
				what += " " + c.name
			}
			where := "cluster-wide"
			role := ClusterRoleName + " (and its ClusterRoleBinding)"
			if c.ns != "" {
				where = "in namespace " + c.ns
				role = TenantClusterRoleName
			}
			rev, err := cl.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
				Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
					Namespace: c.ns, Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.sub, Name: c.name,
				}},
			}, metav1.CreateOptions{})
			switch {
			case err != nil:
				out[i] = Diagnostic{Severity: "warning", Code: "access-review-failed",
					Message: fmt.Sprintf("could not check %s %s %s: %v", c.verb, what, where, err)}
			case !rev.Status.Allowed:
				d := map[string]any{"verb": c.verb, "group": c.group, "resource": c.resource, "subresource": c.sub, "namespace": c.ns}
				if c.name != "" {
					d["name"] = c.name
				}
				out[i] = Diagnostic{Severity: "error", Code: "forbidden",
					Message: fmt.Sprintf("missing permission: %s %s %s (apply the ClusterRole %s printed by `paperclip-k8s rbac --service-account <namespace>/<name>`)", c.verb, what, where, role),
					Details: d}
			}
		}()
	}
	wg.Wait()
	var diags, tenant []Diagnostic
	for i, d := range out {
		switch {
		case d.Message == "":
		case checks[i].tenant && d.Code == "forbidden":
			tenant = append(tenant, d)
		default:
			diags = append(diags, d)
		}
	}
	if len(tenant) == 0 {
		return diags
	}
	// Namespaced permissions are missing: errors if the provider's
	// RoleBinding is there (the tenant ClusterRole lacks them), else a note.
	for _, g := range p.Catalog.Grants() {
		name, err := g.GrantName()
		if err != nil {
			return append(diags, Diagnostic{Severity: "error", Code: "resources", Message: err.Error()})
		}
		_, err = cl.engine.Get(ctx, engine.Ref{Resource: g, Namespace: ns, Name: name})
		if !engine.IsGone(err) {
			return append(diags, tenant...)
		}
		diags = append(diags, Diagnostic{Severity: "info", Code: "tenant-permissions-pending",
			Message: fmt.Sprintf("the provider holds no permission in namespace %s yet (%d namespaced permissions): they come with the %s %s (%s) that acquire applies with the tenant, binding the ClusterRole %s printed by `paperclip-k8s rbac`",
				ns, len(tenant), g.API.Kind, name, g.File, TenantClusterRoleName),
			Details: map[string]any{"namespace": ns, "missing": len(tenant)}})
	}
	return diags
}

// specFor returns the data file of a resource or subresource.
func (p *Provider) specFor(group, resource string) *resource.Resource {
	base, _, _ := strings.Cut(resource, "/")
	for _, s := range p.Catalog.All() {
		if s.API != nil && s.API.Group == group && s.API.Resource == base {
			return s
		}
	}
	return nil
}
