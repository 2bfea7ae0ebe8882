package policy

import (
	"testing"

	"github.com/matryer/is"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// The default aliases are the ones the shipped files declare.
func TestShippedAliases(t *testing.T) {
	is := is.New(t)
	b, err := resources.FS.ReadFile("sandbox.yaml")
	is.NoErr(err)
	var f struct {
		Name    string   `json:"name"`
		Aliases []string `json:"aliases"`
	}
	is.NoErr(yaml.Unmarshal(b, &f))
	is.True(len(f.Aliases) > 0)
	for _, a := range f.Aliases {
		is.Equal(shippedAliases()[a], f.Name)
	}
	is.Equal(shippedAliases()["sandbox-cr"], BackendSandbox)
}

// WithBackendAliases replaces the shipped aliases with the catalog's.
func TestWithBackendAliases(t *testing.T) {
	tests := []struct {
		name     string
		backend  string
		backends []string
		aliases  map[string]string
		want     string
		errs     []string
		warn     bool
	}{
		{"catalog alias", "kata", []string{"sandbox", "kata-vm"}, map[string]string{"kata": "kata-vm"}, "kata-vm", nil, true},
		{"alias in the loaded list", "kata-vm", []string{"kata"}, map[string]string{"kata": "kata-vm"}, "kata-vm", nil, false},
		{"shipped alias unknown to this catalog", "sandbox-cr", []string{"sandbox", "job"}, map[string]string{}, "sandbox-cr", []string{"/backend"}, false},
		{"nil means none", "sandbox-cr", nil, nil, "sandbox-cr", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			cfg, norm, warns, errs := Validate(map[string]any{"inCluster": true, "egressMode": "cilium", "backend": tt.backend}, tt.backends, WithBackendAliases(tt.aliases))
			is.Equal(pointers(errs), tt.errs)
			is.Equal(cfg.Backend, tt.want)
			is.Equal(norm["backend"], tt.want)
			is.Equal(len(warns) > 0, tt.warn)
			if tt.errs != nil {
				is.Equal(errs[0].Message, `"sandbox-cr" is not an available backend: use "job" or "sandbox"`)
			}
		})
	}
}
