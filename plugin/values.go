package plugin

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Values are what the data files read (${path}, $if, $each, when): the
// contract between the provider and resources/*.yaml. The files see them
// as JSON; schemas/values.schema.json declares the same tree (a test keeps
// the two equal) and engine.Load checks every path of every file against
// it. BuildValues is the one place they are made.
type Values struct {
	// Namespace is the company's tenant namespace.
	Namespace string `json:"namespace"`
	// CompanyID is the Paperclip company id, as the host sent it.
	CompanyID string `json:"companyId"`
	// TenantLabels mark the tenant objects as the company's and the
	// provider's.
	TenantLabels map[string]string `json:"tenantLabels"`
	// Config is the environment config, validated and defaulted.
	Config ConfigValues `json:"config"`
	// Egress is the tenant-wide egress allowance of the config.
	Egress EgressValues `json:"egress"`
	// Provider is who the provider is on the cluster (tenant objects only:
	// its RoleBinding in the tenant namespace names it).
	Provider *ProviderValues `json:"provider,omitempty"`
	// Operator holds what the operator sets through the worker's
	// environment (run objects, backends and, when the worker's
	// environment is given, tenant objects).
	Operator *OperatorValues `json:"operator,omitempty"`
	// WarmPool is what the tenant's warm pool runs (tenant objects only).
	WarmPool *WarmPoolValues `json:"warmPool,omitempty"`
	// Grant is the run's own egress grant (run objects and backends only).
	Grant *GrantValues `json:"grant,omitempty"`
	// Run is the run (run objects and backends only).
	Run *RunValues `json:"run,omitempty"`
}

// ConfigValues is the environment config as the files see it: every field
// of policy.Config but the kubeconfig, which is never a value.
type ConfigValues struct {
	policy.Config
	// Kubeconfig hides the config's field of that name (always nil).
	Kubeconfig *struct{} `json:"kubeconfig,omitempty"`
}

// EgressValues are the config's egressAllowFqdns and egressAllowCidrs.
type EgressValues struct {
	FQDNs []string `json:"fqdns"`
	CIDRs []string `json:"cidrs"`
}

// ProviderValues are the provider's identity (see Identity).
type ProviderValues struct {
	Username  string `json:"username"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// OperatorValues are set by the operator through the worker's environment.
type OperatorValues struct {
	// PodAnnotations are PAPERCLIP_K8S_POD_ANNOTATIONS.
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`
}

// WarmPoolValues describe the pods a tenant's warm pool keeps ready
// before any run exists: the config's default adapter (adapterType), whose
// image they run.
type WarmPoolValues struct {
	AdapterType string `json:"adapterType"`
	// Image is that adapter's runtime image after the imageRegistry
	// rewrite ("" when the config's images do not resolve: validation
	// says why).
	Image string `json:"image"`
}

// GrantValues are a run's egress beyond the tenant's: the adapter's FQDNs
// and the task's grant (executionWorkspaceSettings.networkEgress).
type GrantValues struct {
	FQDNs []string `json:"fqdns"`
	CIDRs []string `json:"cidrs"`
	// Any is true when FQDNs or CIDRs is not empty.
	Any bool `json:"any"`
}

// RunValues describe one run.
type RunValues struct {
	// ID is the run id as a label value.
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	SecretName       string            `json:"secretName"`
	EgressPolicyName string            `json:"egressPolicyName"`
	Labels           map[string]string `json:"labels"`
	// PodSelector is {<the backend's run pod label>: <ID>}: the label the
	// run's pod carries, which its scoped egress policy selects on.
	PodSelector map[string]string `json:"podSelector"`
	// DefaultAdapter is true when the run's adapter is the config's
	// adapterType (the one a tenant's warm pool runs).
	DefaultAdapter bool             `json:"defaultAdapter"`
	Image          string           `json:"image"`
	Resources      policy.Resources `json:"resources"`
	// Env is the run Secret's data (adapter keys, BOOTSTRAP_TOKEN, the
	// egress grant's variables).
	Env             map[string]string `json:"env"`
	DeadlineSeconds int64             `json:"deadlineSeconds"`
	DeadlineTime    string            `json:"deadlineTime"`
}

// ValuesInput is what the values derive from besides the config. Nothing
// in it is read from a cluster: the provider's identity is asked once per
// cluster and passed in.
type ValuesInput struct {
	CompanyID string
	Namespace string
	// Identity is the provider's identity; nil leaves provider unset.
	Identity *Identity
	// Getenv reads the worker's environment (the operator's values, the
	// adapter's envKeys).
	Getenv func(string) string
	// Run is nil for the values of the tenant objects alone.
	Run *RunInput
}

// RunInput is what a run's values derive from: the host's acquire
// params, the backend's mode, the clock and what the provider draws.
type RunInput struct {
	RunID         string
	AgentID       string
	EnvironmentID string
	// AdapterType is the host's; blank takes the config's.
	AdapterType                string
	ExecutionWorkspaceSettings map[string]any
	RequestedExpiresAt         string
	// Mode is the backend's mode: exec runs get sandboxLifetimeSec, the
	// others podActivityDeadlineSec.
	Mode string
	// PodLabel is the backend's run pod label (resource.Backend.PodLabel;
	// blank: resource.DefaultRunPodLabel).
	PodLabel string
	// PodLabelValue is that label's value; blank: the run id. A backend
	// whose workloads are made before their run (backend.standby) labels
	// the pod with the lease's name instead, the one value known then.
	PodLabelValue string
	Now           time.Time
	// Name is the run's name (policy.NewRunName), Token its
	// BOOTSTRAP_TOKEN.
	Name  string
	Token string
}

// RunFacts are what BuildValues decided about a run that the lease
// records besides the values.
type RunFacts struct {
	AdapterType string
	Deadline    time.Time
	Grant       policy.EgressGrant
	// Warnings are about the task's egress grant (dropped entries).
	Warnings []string
}

// suffixes of the run objects' names.
const (
	secretSuffix       = "-env"
	egressPolicySuffix = "-egress"
)

// BuildValues builds the values of the tenant objects and, when in.Run is
// set, of a run's objects and workload. It is pure: the same config and
// input give the same values.
func BuildValues(cfg policy.Config, in ValuesInput) (Values, RunFacts, error) {
	v := Values{
		Namespace: in.Namespace,
		CompanyID: in.CompanyID,
		TenantLabels: map[string]string{
			policy.LabelCompanyID: policy.LabelValue(in.CompanyID),
			policy.LabelManagedBy: policy.ManagedByValue,
		},
		Config: ConfigValues{Config: cfg},
		Egress: EgressValues{FQDNs: cfg.EgressAllowFqdns, CIDRs: cfg.EgressAllowCidrs},
	}
	v.Config.Kubeconfig = nil
	if in.Identity != nil {
		v.Provider = in.Identity.values()
	}
	v.WarmPool = warmPoolValues(cfg)
	if in.Run == nil {
		if in.Getenv != nil {
			var err error
			if v.Operator, err = operatorValues(in.Getenv); err != nil {
				return v, RunFacts{}, err
			}
		}
		return v, RunFacts{}, nil
	}
	r := in.Run
	facts := RunFacts{AdapterType: policy.ResolveAdapterType(r.AdapterType, cfg.AdapterType)}
	adapter, err := policy.Defaults(facts.AdapterType, cfg.Adapters)
	if err != nil {
		return v, facts, err
	}
	image, err := policy.ResolveImage("", adapter.RuntimeImage, cfg.ImageAllowList, cfg.ImageRegistry)
	if err != nil {
		return v, facts, err
	}
	lifetime := cfg.PodActivityDeadlineSec
	if r.Mode == resource.ModeExec {
		lifetime = cfg.SandboxLifetimeSec
	}
	if facts.Deadline, err = policy.LeaseDeadline(r.Now, r.RequestedExpiresAt, lifetime); err != nil {
		return v, facts, err
	}
	facts.Grant, facts.Warnings = policy.ParseEgressGrant(r.ExecutionWorkspaceSettings)
	env := policy.AdapterEnv(adapter, in.Getenv)
	if _, ok := env["BOOTSTRAP_TOKEN"]; ok {
		return v, facts, fmt.Errorf("adapter %q sets BOOTSTRAP_TOKEN in defaultEnv or envKeys; that name is reserved for the provider", facts.AdapterType)
	}
	env["BOOTSTRAP_TOKEN"] = r.Token
	for k, val := range policy.EgressEnv(facts.Grant) {
		env[k] = val
	}
	if v.Operator, err = operatorValues(in.Getenv); err != nil {
		return v, facts, err
	}
	fqdns := union(adapter.AllowFqdns, facts.Grant.AllowFqdns)
	v.Grant = &GrantValues{FQDNs: fqdns, CIDRs: facts.Grant.AllowCidrs, Any: len(fqdns)+len(facts.Grant.AllowCidrs) > 0}
	podLabel := r.PodLabel
	if podLabel == "" {
		podLabel = resource.DefaultRunPodLabel
	}
	podLabelValue := r.PodLabelValue
	if podLabelValue == "" {
		podLabelValue = r.RunID
	}
	v.Run = &RunValues{
		ID:               policy.LabelValue(r.RunID),
		PodSelector:      map[string]string{podLabel: policy.LabelValue(podLabelValue)},
		DefaultAdapter:   facts.AdapterType == policy.ResolveAdapterType("", cfg.AdapterType),
		Name:             r.Name,
		SecretName:       r.Name + secretSuffix,
		EgressPolicyName: r.Name + egressPolicySuffix,
		Labels: policy.Labels(policy.RunIdentity{RunID: r.RunID, AgentID: r.AgentID, CompanyID: in.CompanyID,
			EnvironmentID: r.EnvironmentID, AdapterType: facts.AdapterType}),
		Image:           image,
		Resources:       cfg.DefaultResources,
		Env:             env,
		DeadlineSeconds: int64(math.Ceil(facts.Deadline.Sub(r.Now).Seconds())),
		DeadlineTime:    facts.Deadline.UTC().Format(time.RFC3339),
	}
	return v, facts, nil
}

// warmPoolValues are the config's default adapter and its image.
func warmPoolValues(cfg policy.Config) *WarmPoolValues {
	out := &WarmPoolValues{AdapterType: policy.ResolveAdapterType("", cfg.AdapterType)}
	if adapter, err := policy.Defaults(out.AdapterType, cfg.Adapters); err == nil {
		out.Image, _ = policy.ResolveImage("", adapter.RuntimeImage, cfg.ImageAllowList, cfg.ImageRegistry)
	}
	return out
}

// values are the identity as the files see it (${provider.*}); Values is
// the same as a map.
func (id Identity) values() *ProviderValues {
	return &ProviderValues{Username: id.Username, Kind: id.Kind, Name: id.Name, Namespace: id.Namespace}
}

// Map returns the values in the form the engine renders from.
func (v Values) Map() map[string]any {
	m, err := resource.Normalize(v)
	if err != nil {
		// Values hold only strings, numbers, bools, lists and maps.
		panic(fmt.Sprintf("values do not marshal: %v", err))
	}
	return m.(map[string]any)
}

// podAnnotationsEnv is the worker environment variable with annotations for
// every agent pod (a JSON object of strings), e.g. for a service mesh or
// the cluster autoscaler. It is the operator's; a company's config cannot
// set pod annotations.
const podAnnotationsEnv = "PAPERCLIP_K8S_POD_ANNOTATIONS"

// operatorValues are the values the operator sets through the worker's
// environment.
func operatorValues(getenv func(string) string) (*OperatorValues, error) {
	out := &OperatorValues{}
	if getenv == nil {
		return out, nil
	}
	if raw := strings.TrimSpace(getenv(podAnnotationsEnv)); raw != "" {
		if err := json.Unmarshal([]byte(raw), &out.PodAnnotations); err != nil {
			return nil, fmt.Errorf("worker environment variable %s is not a JSON object of strings (%v); fix it in the environment the Paperclip server starts the plugin with", podAnnotationsEnv, err)
		}
	}
	return out, nil
}
