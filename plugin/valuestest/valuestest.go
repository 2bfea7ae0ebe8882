// Package valuestest builds template values for tests from the input files
// in testdata/values with the provider's own builder (plugin.BuildValues),
// so that the golden manifests and the engine's tests render what acquire
// renders: a renamed or dropped value fails them.
package valuestest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Inputs is one file of testdata/values: what BuildValues builds from.
type Inputs struct {
	// Backend names the backend file the case renders.
	Backend string `json:"backend"`
	// Config is the environment config as the company admin writes it;
	// policy.Parse validates and defaults it, as every hook does.
	Config    map[string]any `json:"config"`
	CompanyID string         `json:"companyId"`
	// Identity is the provider's user name, as a SelfSubjectReview
	// returns it.
	Identity string `json:"identity"`
	// WorkerEnv is the worker's environment (adapter keys, the operator's
	// PAPERCLIP_K8S_* variables).
	WorkerEnv map[string]string `json:"workerEnv"`
	Run       struct {
		RunID                      string         `json:"runId"`
		AgentID                    string         `json:"agentId"`
		EnvironmentID              string         `json:"environmentId"`
		AdapterType                string         `json:"adapterType"`
		ExecutionWorkspaceSettings map[string]any `json:"executionWorkspaceSettings"`
		RequestedExpiresAt         string         `json:"requestedExpiresAt"`
		Now                        time.Time      `json:"now"`
		Name                       string         `json:"name"`
		Token                      string         `json:"token"`
	} `json:"run"`
}

// Case is a built case: the values acquire would pass for the run, with
// the provider's identity (which only tenant files read) added, so that
// one map renders every file.
type Case struct {
	Backend string
	Values  map[string]any
	// Typed are the same values as BuildValues returned them.
	Typed plugin.Values
}

// Dir is testdata/values.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "values")
}

// Load reads testdata/values/<name>.yaml and builds its values.
func Load(t testing.TB, c *resource.Catalog, name string) Case {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(Dir(), name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var in Inputs
	if err := yaml.UnmarshalStrict(raw, &in); err != nil {
		t.Fatalf("%s.yaml: %v", name, err)
	}
	vc, err := Build(c, in)
	if err != nil {
		t.Fatalf("%s.yaml: %v", name, err)
	}
	return vc
}

// LoadShipped is Load over the shipped data files (resources/).
func LoadShipped(t testing.TB, name string) Case {
	t.Helper()
	return Load(t, testutil.Catalog(t), name)
}

// Build builds the values of one set of inputs.
func Build(c *resource.Catalog, in Inputs) (Case, error) {
	getenv := func(k string) string { return in.WorkerEnv[k] }
	cfg, err := policy.Parse(in.Config, c.BackendNames(), policy.WithGetenv(getenv))
	if err != nil {
		return Case{}, err
	}
	ns, err := cfg.Namespace(in.CompanyID)
	if err != nil {
		return Case{}, err
	}
	mode, podLabel := "", ""
	if b, ok := c.Get(in.Backend); ok && b.Backend != nil {
		mode, podLabel = b.Backend.Mode, b.Backend.PodLabel()
	}
	id := plugin.ParseUsername(in.Identity)
	r := in.Run
	v, _, err := plugin.BuildValues(cfg, plugin.ValuesInput{CompanyID: in.CompanyID, Namespace: ns, Identity: &id, Getenv: getenv, Run: &plugin.RunInput{
		RunID: r.RunID, AgentID: r.AgentID, EnvironmentID: r.EnvironmentID, AdapterType: r.AdapterType,
		ExecutionWorkspaceSettings: r.ExecutionWorkspaceSettings, RequestedExpiresAt: r.RequestedExpiresAt,
		Mode: mode, PodLabel: podLabel, Now: r.Now, Name: r.Name, Token: r.Token}})
	if err != nil {
		return Case{}, err
	}
	return Case{Backend: in.Backend, Values: v.Map(), Typed: v}, nil
}
