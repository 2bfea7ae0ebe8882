package policy

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
)

// AdapterEntry is one entry of the config's adapters registry. The shape is
// the one of the reference plugin, the Paperclip server and the operator
// (strict: unknown keys are rejected by the schema).
type AdapterEntry struct {
	AdapterType string `json:"adapterType"`
	// Enabled defaults to true; an entry with enabled: false cannot run.
	Enabled      *bool             `json:"enabled,omitempty"`
	RuntimeImage string            `json:"runtimeImage,omitempty"`
	EnvKeys      []string          `json:"envKeys,omitempty"`
	AllowFqdns   []string          `json:"allowFqdns,omitempty"`
	ProbeCommand []string          `json:"probeCommand,omitempty"`
	DefaultEnv   map[string]string `json:"defaultEnv,omitempty"`
}

// IsEnabled reports whether the entry may run (enabled is absent or true).
func (e AdapterEntry) IsEnabled() bool { return e.Enabled == nil || *e.Enabled }

// AdapterDefaults is what a run of one adapter type needs: its image, the
// worker environment keys copied into the run's Secret, the host names it
// must reach, the probe command and fixed environment.
type AdapterDefaults struct {
	AdapterType  string
	RuntimeImage string
	EnvKeys      []string
	AllowFqdns   []string
	ProbeCommand []string
	DefaultEnv   map[string]string
}

var builtinAdapters = map[string]AdapterDefaults{
	"claude_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-claude:v1",
		EnvKeys:      []string{"ANTHROPIC_API_KEY"},
		AllowFqdns:   []string{"api.anthropic.com"},
		ProbeCommand: []string{"claude", "--version"},
	},
	"codex_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-codex:v1",
		EnvKeys:      []string{"OPENAI_API_KEY"},
		AllowFqdns:   []string{"api.openai.com"},
		ProbeCommand: []string{"codex", "--version"},
	},
	"gemini_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-gemini:v1",
		EnvKeys:      []string{"GOOGLE_API_KEY", "GEMINI_API_KEY"},
		AllowFqdns:   []string{"generativelanguage.googleapis.com"},
		ProbeCommand: []string{"gemini", "--version"},
	},
	"cursor_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-cursor:v1",
		EnvKeys:      []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY"},
		AllowFqdns:   []string{"api.anthropic.com", "api.openai.com"},
		ProbeCommand: []string{"cursor-agent", "--version"},
	},
	"opencode_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-opencode:v1",
		EnvKeys:      []string{"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"},
		AllowFqdns:   []string{"api.anthropic.com", "api.openai.com", "openrouter.ai"},
		ProbeCommand: []string{"opencode", "--version"},
	},
	"pi_local": {
		RuntimeImage: "ghcr.io/paperclipai/agent-runtime-pi:v1",
		EnvKeys:      []string{"ANTHROPIC_API_KEY"},
		AllowFqdns:   []string{"api.anthropic.com"},
		ProbeCommand: []string{"pi", "--version"},
	},
}

// DefaultAdapterType is the adapter used when neither the run nor the config
// names one.
const DefaultAdapterType = "claude_local"

// BuiltinAdapterTypes returns the built-in adapter types, sorted.
func BuiltinAdapterTypes() []string {
	return slices.Sorted(maps.Keys(builtinAdapters))
}

// IsBuiltinAdapter reports whether t is one of the six built-in adapters.
func IsBuiltinAdapter(t string) bool {
	_, ok := builtinAdapters[t]
	return ok
}

// Defaults returns the defaults of adapterType.
//
// A non-empty registry is authoritative (it replaces the built-in table, as
// in the reference): a type missing from it is an error even if it is
// built-in, an entry without runtimeImage is an error, and missing lists are
// empty. A disabled entry is an error too (the reference ignored enabled).
// With an empty registry the built-in table is used. Error messages are the
// reference's. The result never aliases the registry or the built-in table.
func Defaults(adapterType string, registry []AdapterEntry) (AdapterDefaults, error) {
	if len(registry) > 0 {
		for _, e := range registry {
			if e.AdapterType != adapterType {
				continue
			}
			if !e.IsEnabled() {
				//lint:ignore ST1005 the reference's message, word for word
				return AdapterDefaults{}, fmt.Errorf("Adapter %q is disabled in the configured adapter registry", adapterType)
			}
			if strings.TrimSpace(e.RuntimeImage) == "" {
				//lint:ignore ST1005 the reference's message, word for word
				return AdapterDefaults{}, fmt.Errorf("Adapter %q is missing required runtime field: runtimeImage", adapterType)
			}
			return AdapterDefaults{
				AdapterType:  adapterType,
				RuntimeImage: strings.TrimSpace(e.RuntimeImage),
				EnvKeys:      cloneStrings(e.EnvKeys),
				AllowFqdns:   canonicalFqdns(e.AllowFqdns),
				ProbeCommand: cloneStrings(e.ProbeCommand),
				DefaultEnv:   cloneMap(e.DefaultEnv),
			}, nil
		}
		//lint:ignore ST1005 the reference's message, word for word
		return AdapterDefaults{}, fmt.Errorf("Adapter %q is not in the configured adapter registry", adapterType)
	}
	b, ok := builtinAdapters[adapterType]
	if !ok {
		//lint:ignore ST1005 the reference's message, word for word
		return AdapterDefaults{}, fmt.Errorf("Unknown adapter type: %s", adapterType)
	}
	return AdapterDefaults{
		AdapterType:  adapterType,
		RuntimeImage: b.RuntimeImage,
		EnvKeys:      cloneStrings(b.EnvKeys),
		AllowFqdns:   cloneStrings(b.AllowFqdns),
		ProbeCommand: cloneStrings(b.ProbeCommand),
		DefaultEnv:   map[string]string{},
	}, nil
}

// ResolveAdapterType returns the run's adapter type (trimmed) when it is not
// blank, else the config's.
func ResolveAdapterType(runAdapterType, configAdapterType string) string {
	if t := strings.TrimSpace(runAdapterType); t != "" {
		return t
	}
	return configAdapterType
}

// AdapterEnv returns the environment of a run's Secret for an adapter: a copy
// of DefaultEnv, then every EnvKeys key whose value from getenv is non-empty
// (the worker's environment overrides DefaultEnv). A nil getenv means
// os.Getenv.
func AdapterEnv(defaults AdapterDefaults, getenv func(string) string) map[string]string {
	if getenv == nil {
		getenv = os.Getenv
	}
	env := make(map[string]string, len(defaults.DefaultEnv)+len(defaults.EnvKeys))
	maps.Copy(env, defaults.DefaultEnv)
	for _, k := range defaults.EnvKeys {
		if v := getenv(k); v != "" {
			env[k] = v
		}
	}
	return env
}

// availableAdapters lists the adapter types a config can run, sorted.
func availableAdapters(registry []AdapterEntry) []string {
	if len(registry) == 0 {
		return BuiltinAdapterTypes()
	}
	var out []string
	for _, e := range registry {
		if e.IsEnabled() {
			out = append(out, e.AdapterType)
		}
	}
	sort.Strings(out)
	return out
}

func cloneStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return slices.Clone(s)
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	maps.Copy(out, m)
	return out
}
