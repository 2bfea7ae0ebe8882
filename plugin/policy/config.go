// Package policy holds the provider's pure policy: the typed and validated
// provider config, adapter defaults, image resolution, names and labels,
// task-scoped egress grants and lease deadlines. It talks to no cluster.
//
// The config schema is schemas/config.schema.json (also the manifest's
// configSchema); Validate checks a config against it and then applies the
// cross-field rules a JSON Schema cannot express.
package policy

import "encoding/json"

// Backend names of the shipped resource files (resources/sandbox.yaml and
// resources/job.yaml). Their aliases are declared in those files.
const (
	BackendSandbox = "sandbox"
	BackendJob     = "job"
)

// Egress modes.
const (
	EgressModeStandard = "standard"
	EgressModeCilium   = "cilium"
)

// Config is the validated, normalized provider config. Every field holds its
// default when the input left it out (see schemas/config.schema.json).
type Config struct {
	InCluster bool `json:"inCluster"`
	// Kubeconfig is the kubeconfig YAML (at validation time the host may send
	// a secret id instead). Its String and MarshalJSON never reveal it.
	Kubeconfig      Secret `json:"kubeconfig,omitempty"`
	NamespacePrefix string `json:"namespacePrefix"`
	// CompanySlug is "" when the slug is derived from the company id.
	CompanySlug string `json:"companySlug,omitempty"`
	// ImageRegistry is a bare host[:port][/path] without a trailing '/', or "".
	ImageRegistry    string   `json:"imageRegistry,omitempty"`
	ImageAllowList   []string `json:"imageAllowList"`
	ImagePullSecrets []string `json:"imagePullSecrets"`
	ImagePullPolicy  string   `json:"imagePullPolicy"`
	// EgressAllowFqdns are lowercase, without a trailing dot.
	EgressAllowFqdns []string `json:"egressAllowFqdns"`
	// EgressAllowCidrs are canonical CIDRs (netip.Prefix.String()).
	EgressAllowCidrs         []string          `json:"egressAllowCidrs"`
	EgressMode               string            `json:"egressMode"`
	PaperclipServerNamespace string            `json:"paperclipServerNamespace"`
	PaperclipServerPodLabels map[string]string `json:"paperclipServerPodLabels"`
	PaperclipServerPort      int               `json:"paperclipServerPort"`
	// WorkspacePath is absolute and clean.
	WorkspacePath string `json:"workspacePath"`
	// Backend is canonical: an alias a backend's file declares becomes the
	// backend's name.
	Backend string `json:"backend"`
	// WarmPoolSize is how many ready pods the tenant's warm pool keeps
	// (read by resources/sandboxwarmpool.yaml).
	WarmPoolSize int `json:"warmPoolSize"`
	// StandbyLeases is how many workloads the worker keeps made and ready
	// ahead of an environment's next runs (backends whose file declares
	// backend.standby).
	StandbyLeases int `json:"standbyLeases"`
	// AdapterType is the default adapter of a run; it resolves with
	// Defaults(AdapterType, Adapters).
	AdapterType      string            `json:"adapterType"`
	Adapters         []AdapterEntry    `json:"adapters,omitempty"`
	DefaultResources Resources         `json:"defaultResources"`
	RuntimeClassName string            `json:"runtimeClassName,omitempty"`
	NodeSelector     map[string]string `json:"nodeSelector"`
	// ResourceQuota is spec.hard of the tenant ResourceQuota.
	ResourceQuota map[string]string `json:"resourceQuota"`
	// TenantLimits is the maximum of the tenant LimitRange.
	TenantLimits              TenantLimits      `json:"tenantLimits"`
	ServiceAccountAnnotations map[string]string `json:"serviceAccountAnnotations"`
	SandboxLifetimeSec        int               `json:"sandboxLifetimeSec"`
	// ReusableLeaseIdleSec bounds a lease kept for reuse between runs.
	ReusableLeaseIdleSec       int   `json:"reusableLeaseIdleSec"`
	PodActivityDeadlineSec     int   `json:"podActivityDeadlineSec"`
	JobTTLSecondsAfterFinished int   `json:"jobTtlSecondsAfterFinished"`
	ExecMaxOutputBytes         int64 `json:"execMaxOutputBytes"`
}

// Resources are the agent container's requests and limits. After Validate
// all four quantities are set.
type Resources struct {
	Requests ResourceList `json:"requests"`
	Limits   ResourceList `json:"limits"`
}

// TenantLimits is the per-container maximum of the tenant LimitRange
// (resources/limitrange.yaml): Kubernetes quantities, both set after
// Validate.
type TenantLimits struct {
	MaxCPU    string `json:"maxCpu"`
	MaxMemory string `json:"maxMemory"`
}

// ResourceList holds Kubernetes quantities such as "250m" or "4Gi".
type ResourceList struct {
	CPU    string `json:"cpu"`
	Memory string `json:"memory"`
}

// Secret is a string that does not print: String, GoString and MarshalJSON
// give "[redacted]" (or "" when empty). Use Reveal for the value.
type Secret string

const redacted = "[redacted]"

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer without revealing the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer without revealing the value.
func (s Secret) GoString() string { return `policy.Secret("` + s.String() + `")` }

// MarshalJSON never reveals the value.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }
