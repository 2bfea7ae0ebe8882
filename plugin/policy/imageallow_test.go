package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// imageAllowList bounds the runtime image too, after imageRegistry; an
// empty list allows every runtime image.
func TestResolveImageAllowList(t *testing.T) {
	tests := []struct {
		name, image, registry string
		allow                 []string
		want                  string
	}{
		{name: "empty list allows", image: "registry.example.com/agents/claude:1.2.0", want: "registry.example.com/agents/claude:1.2.0"},
		{name: "allowed", image: "ghcr.io/acme/claude:1.2.0", allow: []string{"ghcr.io/acme/*"}, want: "ghcr.io/acme/claude:1.2.0"},
		{name: "not allowed", image: "registry.example.com/agents/claude:1.2.0", allow: []string{"ghcr.io/acme/*"}},
		{name: "glob does not cross /", image: "ghcr.io/acme/team/claude:1", allow: []string{"ghcr.io/acme/*"}},
		{name: "checked after the registry rewrite", image: "ghcr.io/acme/claude:1", registry: "mirror.example.com/m", allow: []string{"ghcr.io/acme/*"}},
		{name: "registry image allowed", image: "ghcr.io/evil/claude:1", registry: "mirror.example.com/m", allow: []string{"mirror.example.com/m/*"}, want: "mirror.example.com/m/claude:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got, err := ResolveImage("", tt.image, tt.allow, tt.registry)
			if tt.want != "" {
				is.NoErr(err)
				is.Equal(got, tt.want)
				return
			}
			var na *NotAllowedError
			is.True(errors.As(err, &na))
			is.Equal(got, "")
			is.True(strings.Contains(err.Error(), "imageAllowList"))
			is.True(strings.Contains(err.Error(), na.Image))
		})
	}
}

// Validation refuses a config whose allow list leaves an adapter's image
// out, naming the adapter and its resolved image, for configured adapters
// and for the built-in ones; disabled adapters are not checked.
func TestValidateImageAllowList(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{"inCluster": true}
	}
	t.Run("configured adapter", func(t *testing.T) {
		is := is.New(t)
		c := base()
		c["imageAllowList"] = []any{"ghcr.io/acme/*"}
		c["adapters"] = []any{
			map[string]any{"adapterType": "claude_local", "runtimeImage": "registry.example.com/agents/claude:1.2.0"},
			map[string]any{"adapterType": "codex_local", "runtimeImage": "ghcr.io/acme/codex:1"},
			map[string]any{"adapterType": "gemini_local", "runtimeImage": "docker.io/x/gemini:1", "enabled": false},
		}
		_, _, _, errs := Validate(c, testBackends)
		is.Equal(len(errs), 1)
		is.Equal(errs[0].Pointer, "/imageAllowList")
		is.True(strings.Contains(errs[0].Message, `adapter "claude_local" runs "registry.example.com/agents/claude:1.2.0"`))
		is.True(strings.Contains(errs[0].Message, `["ghcr.io/acme/*"]`))
	})
	t.Run("built-in adapters under imageRegistry", func(t *testing.T) {
		is := is.New(t)
		c := base()
		c["imageRegistry"] = "mirror.example.com/m"
		c["imageAllowList"] = []any{"ghcr.io/paperclipai/*"} // the images before the rewrite: not what runs
		_, _, _, errs := Validate(c, testBackends)
		is.Equal(len(errs), 1)
		is.Equal(errs[0].Pointer, "/imageAllowList")
		for _, typ := range BuiltinAdapterTypes() { // each adapter named, with its image
			is.True(strings.Contains(errs[0].Message, `adapter "`+typ+`" runs "mirror.example.com/m/agent-runtime-`))
		}
		is.True(strings.Contains(errs[0].Message, `(its runtimeImage "ghcr.io/paperclipai/agent-runtime-claude:v1" under imageRegistry)`))
		t.Log(errs[0])
		c["imageAllowList"] = []any{"mirror.example.com/m/*"}
		_, _, _, errs = Validate(c, testBackends)
		is.Equal(len(errs), 0)
	})
	t.Run("empty list", func(t *testing.T) {
		is := is.New(t)
		c := base()
		c["imageAllowList"] = []any{}
		_, _, _, errs := Validate(c, testBackends)
		is.Equal(len(errs), 0)
	})
}
