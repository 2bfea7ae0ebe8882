package policy

import (
	"strings"
	"testing"

	"github.com/matryer/is"
)

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern, value string
		want           bool
	}{
		{"ghcr.io/acme/agent:1", "ghcr.io/acme/agent:1", true},
		{"ghcr.io/acme/agent:?", "ghcr.io/acme/agent:2", true},
		{"ghcr.io/acme/agent:?", "ghcr.io/acme/agent:10", false},
		{"ghcr.io/acme/*", "ghcr.io/acme/agent:1", true},
		{"ghcr.io/acme/*", "ghcr.io/acme/team/agent:1", false}, // '*' never crosses '/'
		{"ghcr.io/*/agent:1", "ghcr.io/acme/agent:1", true},
		{"ghcr.io/*", "ghcr.io/", true},
		{"ghcr.io/ac?e/*", "ghcr.io/ac/e/x", false}, // '?' never matches '/'
		{"*", "busybox:1", true},
		{"*", "library/busybox", false},
		{"ghcr.io/acme/a*b*c", "ghcr.io/acme/axxbyyc", true},
		{"ghcr.io/acme/a*b*c", "ghcr.io/acme/axxbyy", false},
		{"ghcr.io/acme/agent.v1", "ghcr.io/acme/agentXv1", false}, // '.' is literal
		{"ghcr.io/acme/[ab]", "ghcr.io/acme/a", false},            // no classes
		{"ghcr.io/acme/**", "ghcr.io/acme/x/y", false},
		{"ghcr.io/acme/agent@sha256:*", "ghcr.io/acme/agent@sha256:abc", true},
		{"", "", true},
		{"", "x", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"~"+tt.value, func(t *testing.T) {
			is.New(t).Equal(GlobMatch(tt.pattern, tt.value), tt.want)
		})
	}
}

func TestResolveImage(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name      string
		override  string
		image     string
		allow     []string
		registry  string
		want      string
		wantError string
	}{
		{name: "runtime image", image: "ghcr.io/paperclipai/agent-runtime-claude:v1", want: "ghcr.io/paperclipai/agent-runtime-claude:v1"},
		{name: "registry rewrite", image: "ghcr.io/paperclipai/agent-runtime-claude:v1", registry: "registry.example.com/mirror", want: "registry.example.com/mirror/agent-runtime-claude:v1"},
		{name: "registry trailing slash", image: "ghcr.io/paperclipai/agent-runtime-claude:v1", registry: "registry.example.com/", want: "registry.example.com/agent-runtime-claude:v1"},
		{name: "registry with port", image: "ghcr.io/paperclipai/agent-runtime-claude:v1", registry: "registry.example.com:5000", want: "registry.example.com:5000/agent-runtime-claude:v1"},
		{name: "source with port", image: "localhost:5000/acme/agent:v1", registry: "reg.example.com", want: "reg.example.com/agent:v1"},
		{name: "digest kept", image: "ghcr.io/acme/agent@" + digest, registry: "reg.example.com", want: "reg.example.com/agent@" + digest},
		{name: "tag and digest kept", image: "ghcr.io/acme/agent:v1@" + digest, registry: "reg.example.com", want: "reg.example.com/agent:v1@" + digest},
		{name: "docker hub official image", image: "busybox:1", registry: "reg.example.com/hub", want: "reg.example.com/hub/busybox:1"},
		{name: "docker hub official image, no tag", image: "busybox", registry: "reg.example.com", want: "reg.example.com/busybox"},
		{name: "docker hub library explicit", image: "docker.io/library/x", registry: "reg.example.com", want: "reg.example.com/x"},
		{name: "docker hub short domain", image: "docker.io/x:2", registry: "reg.example.com", want: "reg.example.com/x:2"},
		{name: "docker hub user image", image: "acme/agent:1", registry: "reg.example.com", want: "reg.example.com/agent:1"},
		{name: "deep path keeps all but the org", image: "ghcr.io/acme/team/agent:1", registry: "reg.example.com", want: "reg.example.com/team/agent:1"},
		{name: "registry host only image", image: "ghcr.io/agent:1", registry: "reg.example.com", want: "reg.example.com/agent:1"},
		{name: "already under the registry", image: "reg.example.com/mirror/agent:1", registry: "reg.example.com/mirror", want: "reg.example.com/mirror/agent:1"},
		{name: "ipv6 registry", image: "ghcr.io/acme/agent:1", registry: "[2001:db8::5]:5000", want: "[2001:db8::5]:5000/agent:1"},
		{name: "override allowed", override: "ghcr.io/acme/custom:2", image: "ghcr.io/paperclipai/x:v1", allow: []string{"quay.io/*", "ghcr.io/acme/*"}, registry: "reg.example.com", want: "ghcr.io/acme/custom:2"},
		{name: "override refused", override: "ghcr.io/evil/x:1", image: "ghcr.io/paperclipai/x:v1", allow: []string{"ghcr.io/acme/*"}, wantError: `Image override "ghcr.io/evil/x:1" is not in allowlist`},
		{name: "override refused with empty allow list", override: "ghcr.io/acme/x:1", image: "ghcr.io/paperclipai/x:v1", wantError: "not in allowlist"},
		{name: "override with glob not crossing /", override: "ghcr.io/acme/team/x:1", allow: []string{"ghcr.io/acme/*"}, wantError: "not in allowlist"},
		{name: "blank override ignored", override: "  ", image: "ghcr.io/paperclipai/x:v1", want: "ghcr.io/paperclipai/x:v1"},
		{name: "no image", wantError: "no runtime image"},
		{name: "registry with scheme", image: "ghcr.io/a/b:1", registry: "https://reg.example.com", wantError: "without a URL scheme"},
		{name: "bad runtime image", image: "ghcr.io/a/B c", registry: "reg.example.com", wantError: "must not contain spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got, err := ResolveImage(tt.override, tt.image, tt.allow, tt.registry)
			if tt.wantError != "" {
				is.True(err != nil)
				is.True(strings.Contains(err.Error(), tt.wantError))
				return
			}
			is.NoErr(err)
			is.Equal(got, tt.want)
		})
	}
}

func TestParseImageRef(t *testing.T) {
	tests := []struct {
		in     string
		want   imageRef
		errHas string
	}{
		{in: "busybox", want: imageRef{path: "busybox"}},
		{in: "busybox:1.36", want: imageRef{path: "busybox", tag: "1.36"}},
		{in: "localhost/x", want: imageRef{domain: "localhost", path: "x"}},
		{in: "localhost:5000/x:1", want: imageRef{domain: "localhost:5000", path: "x", tag: "1"}},
		{in: "Registry.Example.com/a/b", want: imageRef{domain: "Registry.Example.com", path: "a/b"}},
		{in: "[::1]:5000/a", want: imageRef{domain: "[::1]:5000", path: "a"}},
		{in: "ghcr.io/a/b:c@sha256:0123456789abcdef0123456789abcdef", want: imageRef{domain: "ghcr.io", path: "a/b", tag: "c", digest: "sha256:0123456789abcdef0123456789abcdef"}},
		{in: "", errHas: "empty"},
		{in: "https://ghcr.io/a", errHas: "scheme"},
		{in: "ghcr.io/A/b", errHas: "path component"},
		{in: "ghcr.io/a@sha256:xyz", errHas: "digest"},
		{in: "ghcr.io/a:bad tag", errHas: "spaces"},
		{in: "ghcr.io/a:-x", errHas: "tag"},
		{in: "ghcr.io:99999/a", errHas: "port"},
		{in: "ghcr.io/", errHas: "repository name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			got, err := parseImageRef(tt.in)
			if tt.errHas != "" {
				is.True(err != nil)
				is.True(strings.Contains(err.Error(), tt.errHas))
				return
			}
			is.NoErr(err)
			is.Equal(got, tt.want)
		})
	}
}
