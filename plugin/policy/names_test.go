package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

func TestCompanySlug(t *testing.T) {
	long := strings.Repeat("Acme Corp ", 8) // 80 characters
	tests := []struct {
		name, in, want string
	}{
		{"uuid kept whole", "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b", "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b"},
		{"lowercased", "ACME", "acme"},
		{"runs replaced", "Acme  Corp__Ltd", "acme-corp-ltd"},
		{"ends trimmed", "--acme!!", "acme"},
		{"empty", "", "company"},
		{"only invalid", "!!!", "company"},
		{"53 kept", strings.Repeat("a", 53), strings.Repeat("a", 53)},
		{"54 hashed", strings.Repeat("a", 54), strings.Repeat("a", 44) + "-" + sha8(strings.Repeat("a", 54))},
		{"hash of the original input", long, "acme-corp-acme-corp-acme-corp-acme-corp-acme-" + sha8(long)},
		{"trailing '-' trimmed before the hash", strings.Repeat("a", 43) + "--" + strings.Repeat("b", 20), strings.Repeat("a", 43) + "-" + sha8(strings.Repeat("a", 43)+"--"+strings.Repeat("b", 20))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got := CompanySlug(tt.in)
			is.Equal(got, tt.want)
			is.True(len(got) <= 53)
		})
	}
}

func TestNamespaceName(t *testing.T) {
	tests := []struct {
		prefix, slug, want, errHas string
	}{
		{"paperclip-", "acme", "paperclip-acme", ""},
		{"paperclip-", "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b", "paperclip-5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b", ""},
		{strings.Repeat("p", 10), strings.Repeat("s", 53), strings.Repeat("p", 10) + strings.Repeat("s", 53), ""},
		{strings.Repeat("p", 11), strings.Repeat("s", 53), "", "64 characters; the limit is 63"},
		{"paperclip-", "acme-", "", "not a DNS label"},
		{"Paperclip-", "acme", "", "not a DNS label"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix+tt.slug, func(t *testing.T) {
			is := is.New(t)
			got, err := NamespaceName(tt.prefix, tt.slug)
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

func TestConfigNamespace(t *testing.T) {
	uuid := "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b"
	longID := strings.Repeat("x", 70)
	tests := []struct {
		name   string
		cfg    Config
		id     string
		want   string
		errHas string
	}{
		{"derived", Config{NamespacePrefix: "paperclip-"}, uuid, "paperclip-" + uuid, ""},
		{"configured slug", Config{NamespacePrefix: "paperclip-", CompanySlug: "acme"}, uuid, "paperclip-acme", ""},
		{"derived slug shortened to fit", Config{NamespacePrefix: strings.Repeat("p", 32)}, uuid, "", ""},
		{"long id", Config{NamespacePrefix: "paperclip-"}, longID, "paperclip-" + CompanySlug(longID), ""},
		{"configured slug too long", Config{NamespacePrefix: strings.Repeat("p", 32), CompanySlug: strings.Repeat("s", 32)}, uuid, "", "limit is 63"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			got, err := tt.cfg.Namespace(tt.id)
			if tt.errHas != "" {
				is.True(err != nil)
				is.True(strings.Contains(err.Error(), tt.errHas))
				return
			}
			is.NoErr(err)
			is.True(len(got) <= 63)
			is.True(dnsLabelRE.MatchString(got))
			if tt.want != "" {
				is.Equal(got, tt.want)
			} else {
				is.Equal(len(got), 63)
				is.True(strings.HasSuffix(got, "-"+sha8(tt.id)))
			}
		})
	}
}

func TestNewRunName(t *testing.T) {
	is := is.New(t)
	re := regexp.MustCompile(`^pc-[0-9abcdefghjkmnpqrstvwxyz]{26}$`)
	seen := map[string]bool{}
	for range 1000 {
		n := NewRunName()
		is.True(re.MatchString(n))
		is.True(dnsLabelRE.MatchString(n))
		is.True(!seen[n])
		seen[n] = true
	}
}

func TestULID(t *testing.T) {
	is := is.New(t)
	at := time.UnixMilli(1_700_000_000_000)
	zeros := bytes.NewReader(make([]byte, 16))
	u := newULID(at, zeros)
	is.Equal(len(u), 26)
	is.Equal(u, "01hf7yat00"+strings.Repeat("0", 16))
	// Time-ordered: a later millisecond sorts after.
	later := newULID(at.Add(time.Millisecond), bytes.NewReader(make([]byte, 16)))
	is.True(later > u)
	// Random part uses all 32 symbols.
	ff := newULID(at, bytes.NewReader(bytes.Repeat([]byte{0xff}, 16)))
	is.Equal(ff[10:], strings.Repeat("z", 16))
}

func TestLabels(t *testing.T) {
	tests := []struct {
		name string
		run  RunIdentity
		want map[string]string
	}{
		{
			name: "all fields",
			run:  RunIdentity{RunID: "0b9f2c6e-1111-4a2b-9c3d-4e5f6a7b8c9d", AgentID: "agent-7", CompanyID: "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b", AdapterType: "claude_local"},
			want: map[string]string{
				LabelRunID:     "0b9f2c6e-1111-4a2b-9c3d-4e5f6a7b8c9d",
				LabelAgentID:   "agent-7",
				LabelCompanyID: "5e3b2f0a-7c1d-4e8f-9a6b-3c2d1e0f9a8b",
				LabelAdapter:   "claude_local",
				LabelManagedBy: "paperclip-k8s-plugin",
			},
		},
		{
			name: "agent id omitted when unknown (never the run id)",
			run:  RunIdentity{RunID: "r1", CompanyID: "c1", AdapterType: "codex_local"},
			want: map[string]string{LabelRunID: "r1", LabelCompanyID: "c1", LabelAdapter: "codex_local", LabelManagedBy: "paperclip-k8s-plugin"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			is.Equal(Labels(tt.run), tt.want)
			p := PodLabels(tt.run)
			is.Equal(p[LabelRole], "agent")
			is.Equal(len(p), len(tt.want)+1)
		})
	}
}

func TestLabelValue(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means: check the shape only
	}{
		{"abc", "abc"},
		{"A-b_c.9", "A-b_c.9"},
		{"", ""},
		{strings.Repeat("a", 63), strings.Repeat("a", 63)},
		{"my agent", "my-agent-" + sha8("my agent")},
		{"-x-", "x-" + sha8("-x-")},
		{"!!!", sha8("!!!")},
		{strings.Repeat("a", 64), ""},
		{"agent/with:colons", ""},
		{strings.Repeat("é", 40), ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			got := LabelValue(tt.in)
			is.True(len(got) <= 63)
			is.True(labelValueRE.MatchString(got))
			if tt.want != "" || tt.in == "" {
				is.Equal(got, tt.want)
			}
			is.Equal(LabelValue(got), got) // idempotent on valid values
		})
	}
	is := is.New(t)
	// Distinct invalid inputs stay distinct.
	is.True(LabelValue("a b") != LabelValue("a-b"))
	is.True(LabelValue(strings.Repeat("a", 64)) != LabelValue(strings.Repeat("a", 65)))
}

func sha8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:8]
}

func TestReservedNamespacesAreNeverTenants(t *testing.T) {
	is := is.New(t)
	for _, c := range []struct{ prefix, slug string }{
		{"kube-", "system"}, {"kube-", "public"}, {"openshift-", "x"}, {"de", "fault"}, {"open", "shift"},
	} {
		_, err := NamespaceName(c.prefix, c.slug)
		is.True(err != nil)
		is.True(strings.Contains(err.Error(), "cannot be a tenant namespace"))
	}
	_, err := Config{NamespacePrefix: "kube-"}.Namespace("system")
	is.True(err != nil)
	ns, err := Config{NamespacePrefix: "paperclip-"}.Namespace("kube-system")
	is.NoErr(err)
	is.Equal(ns, "paperclip-kube-system") // a company id is only ever a suffix
	is.Equal(Reserved("paperclip-acme"), "")
}

func TestIsRunName(t *testing.T) {
	is := is.New(t)
	is.True(IsRunName(NewRunName()))
	for _, s := range []string{"", "pc-", "paperclip-deny-all", "pc-01jd8x6m9q2r3s4t5v6w7x8y9", "pc-01jd8x6m9q2r3s4t5v6w7x8y9zz", "pc-01JD8X6M9Q2R3S4T5V6W7X8Y9Z", "pc-01jd8x6m9q2r3s4t5v6w7x8y9i"} {
		is.True(!IsRunName(s))
	}
}
