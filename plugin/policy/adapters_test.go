package policy

import (
	"testing"

	"github.com/matryer/is"
)

func boolPtr(b bool) *bool { return &b }

func TestBuiltinAdapters(t *testing.T) {
	tests := []struct {
		adapter string
		image   string
		envKeys []string
		fqdns   []string
		probe   []string
	}{
		{"claude_local", "ghcr.io/paperclipai/agent-runtime-claude:v1", []string{"ANTHROPIC_API_KEY"}, []string{"api.anthropic.com"}, []string{"claude", "--version"}},
		{"codex_local", "ghcr.io/paperclipai/agent-runtime-codex:v1", []string{"OPENAI_API_KEY"}, []string{"api.openai.com"}, []string{"codex", "--version"}},
		{"gemini_local", "ghcr.io/paperclipai/agent-runtime-gemini:v1", []string{"GOOGLE_API_KEY", "GEMINI_API_KEY"}, []string{"generativelanguage.googleapis.com"}, []string{"gemini", "--version"}},
		{"cursor_local", "ghcr.io/paperclipai/agent-runtime-cursor:v1", []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY"}, []string{"api.anthropic.com", "api.openai.com"}, []string{"cursor-agent", "--version"}},
		{"opencode_local", "ghcr.io/paperclipai/agent-runtime-opencode:v1", []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"}, []string{"api.anthropic.com", "api.openai.com", "openrouter.ai"}, []string{"opencode", "--version"}},
		{"pi_local", "ghcr.io/paperclipai/agent-runtime-pi:v1", []string{"ANTHROPIC_API_KEY"}, []string{"api.anthropic.com"}, []string{"pi", "--version"}},
	}
	is := is.New(t)
	is.Equal(len(BuiltinAdapterTypes()), len(tests))
	for _, tt := range tests {
		t.Run(tt.adapter, func(t *testing.T) {
			is := is.New(t)
			is.True(IsBuiltinAdapter(tt.adapter))
			d, err := Defaults(tt.adapter, nil)
			is.NoErr(err)
			is.Equal(d.AdapterType, tt.adapter)
			is.Equal(d.RuntimeImage, tt.image)
			is.Equal(d.EnvKeys, tt.envKeys)
			is.Equal(d.AllowFqdns, tt.fqdns)
			is.Equal(d.ProbeCommand, tt.probe)
			is.Equal(d.DefaultEnv, map[string]string{})
		})
	}
	is.True(!IsBuiltinAdapter("acpx_local")) // removed upstream in #9238
}

func TestDefaultsErrors(t *testing.T) {
	reg := []AdapterEntry{
		{AdapterType: "my_agent", RuntimeImage: "ghcr.io/acme/my:1"},
		{AdapterType: "no_image"},
		{AdapterType: "off", RuntimeImage: "ghcr.io/acme/off:1", Enabled: boolPtr(false)},
	}
	tests := []struct {
		name     string
		adapter  string
		registry []AdapterEntry
		want     string
	}{
		{"unknown built-in", "nope", nil, "Unknown adapter type: nope"},
		{"empty registry is no registry", "nope", []AdapterEntry{}, "Unknown adapter type: nope"},
		{"registry replaces built-ins", "claude_local", reg, `Adapter "claude_local" is not in the configured adapter registry`},
		{"missing image", "no_image", reg, `Adapter "no_image" is missing required runtime field: runtimeImage`},
		{"disabled", "off", reg, `Adapter "off" is disabled in the configured adapter registry`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			_, err := Defaults(tt.adapter, tt.registry)
			is.True(err != nil)
			is.Equal(err.Error(), tt.want)
		})
	}
}

func TestDefaultsRegistry(t *testing.T) {
	is := is.New(t)
	reg := []AdapterEntry{{
		AdapterType:  "claude_local",
		RuntimeImage: "registry.example.com/claude:2",
		AllowFqdns:   []string{"API.Anthropic.com.", "claude.ai"},
		DefaultEnv:   map[string]string{"A": "1"},
	}}
	d, err := Defaults("claude_local", reg)
	is.NoErr(err)
	// Replace semantics: nothing is inherited from the built-in entry.
	is.Equal(d.RuntimeImage, "registry.example.com/claude:2")
	is.Equal(d.EnvKeys, []string{})
	is.Equal(d.ProbeCommand, []string{})
	is.Equal(d.AllowFqdns, []string{"api.anthropic.com", "claude.ai"})
	// No aliasing of the registry or the built-in table.
	d.DefaultEnv["A"] = "changed"
	is.Equal(reg[0].DefaultEnv["A"], "1")
	b, _ := Defaults("claude_local", nil)
	b.EnvKeys[0] = "X"
	b2, _ := Defaults("claude_local", nil)
	is.Equal(b2.EnvKeys[0], "ANTHROPIC_API_KEY")
}

func TestResolveAdapterType(t *testing.T) {
	tests := []struct{ run, cfg, want string }{
		{"codex_local", "claude_local", "codex_local"},
		{"  codex_local  ", "claude_local", "codex_local"},
		{"", "claude_local", "claude_local"},
		{"   ", "pi_local", "pi_local"},
	}
	for _, tt := range tests {
		is.New(t).Equal(ResolveAdapterType(tt.run, tt.cfg), tt.want)
	}
}

func TestAdapterEnv(t *testing.T) {
	env := map[string]string{"ANTHROPIC_API_KEY": "sk-env", "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name string
		d    AdapterDefaults
		want map[string]string
	}{
		{"process env overrides defaultEnv", AdapterDefaults{EnvKeys: []string{"ANTHROPIC_API_KEY"}, DefaultEnv: map[string]string{"ANTHROPIC_API_KEY": "default", "MODE": "k8s"}},
			map[string]string{"ANTHROPIC_API_KEY": "sk-env", "MODE": "k8s"}},
		{"absent and empty keys skipped", AdapterDefaults{EnvKeys: []string{"MISSING", "EMPTY"}, DefaultEnv: map[string]string{"EMPTY": "kept"}},
			map[string]string{"EMPTY": "kept"}},
		{"nothing", AdapterDefaults{}, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got := AdapterEnv(tt.d, getenv)
			is.Equal(got, tt.want)
			got["NEW"] = "x"
			_, leaked := tt.d.DefaultEnv["NEW"]
			is.True(!leaked)
		})
	}
	t.Run("nil getenv reads the process environment", func(t *testing.T) {
		t.Setenv("PC_POLICY_TEST_KEY", "v")
		is.New(t).Equal(AdapterEnv(AdapterDefaults{EnvKeys: []string{"PC_POLICY_TEST_KEY"}}, nil), map[string]string{"PC_POLICY_TEST_KEY": "v"})
	})
}
