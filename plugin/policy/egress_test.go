package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/matryer/is"
)

func settings(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseEgressGrant(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		fqdns     []string
		cidrs     []string
		warnings  int
		warnsHave []string
	}{
		{name: "nil", in: `null`, fqdns: []string{}, cidrs: []string{}},
		{name: "absent", in: `{"other":1}`, fqdns: []string{}, cidrs: []string{}},
		{name: "null grant", in: `{"networkEgress":null}`, fqdns: []string{}, cidrs: []string{}},
		{
			name:  "normalized",
			in:    `{"networkEgress":{"allowFqdns":[" PyPI.org ","pypi.org","","files.pythonhosted.org."],"allowCidrs":["10.0.0.0/8"," 10.0.0.0/8","2001:DB8::/32","192.168.1.7"]}}`,
			fqdns: []string{"pypi.org", "files.pythonhosted.org"},
			cidrs: []string{"10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"},
		},
		{
			name:      "invalid entries dropped with warnings",
			in:        `{"networkEgress":{"allowFqdns":["*.x.com","ok.com",7],"allowCidrs":["10.0.0.0/33","10.1.2.3/8","nope","fd00::/8"]}}`,
			fqdns:     []string{"ok.com"},
			cidrs:     []string{"fd00::/8"},
			warnings:  5,
			warnsHave: []string{"allowFqdns[0]", "allowFqdns[2] is not a string", "allowCidrs[0]", "allowCidrs[1]", "allowCidrs[2]"},
		},
		{name: "grant not an object", in: `{"networkEgress":"all"}`, fqdns: []string{}, cidrs: []string{}, warnings: 1},
		{name: "lists not arrays", in: `{"networkEgress":{"allowFqdns":"a.com","allowCidrs":{}}}`, fqdns: []string{}, cidrs: []string{}, warnings: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			g, warns := ParseEgressGrant(settings(t, tt.in))
			is.Equal(g.AllowFqdns, tt.fqdns)
			is.Equal(g.AllowCidrs, tt.cidrs)
			is.Equal(len(warns), tt.warnings)
			all := strings.Join(warns, "\n")
			for _, w := range tt.warnsHave {
				is.True(strings.Contains(all, w))
			}
			b, _ := json.Marshal(g)
			is.True(!strings.Contains(string(b), "null"))
		})
	}
	is := is.New(t)
	g, _ := ParseEgressGrant(nil)
	is.True(g.Empty())
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in, want, errHas string
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "2001:0DB8:0000::/32", want: "2001:db8::/32"},
		{in: "10.0.0.0/33", errHas: "0 to 32"},
		{in: "2001:db8::/129", errHas: "0 to 128"},
		{in: "10.0.0.1/8", errHas: "use 10.0.0.0/8 (the whole network) or 10.0.0.1/32"},
		{in: "010.0.0.0/8", errHas: "not an IPv4 or IPv6 address"},
		{in: "10.0.0.0", errHas: "10.0.0.0/32"},
		{in: "fe80::1%eth0/64", errHas: "zone"},
		{in: "::ffff:10.0.0.0/104", errHas: "10.0.0.0/8"},
		{in: "10.0.0.0/x", errHas: "prefix length"},
		{in: "", errHas: "not a CIDR"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			p, err := ParseCIDR(tt.in)
			if tt.errHas != "" {
				is.True(err != nil)
				is.True(strings.Contains(err.Error(), tt.errHas))
				return
			}
			is.NoErr(err)
			is.Equal(p.String(), tt.want)
		})
	}
}

func TestEgressDenyHint(t *testing.T) {
	grant := EgressGrant{AllowFqdns: []string{"pypi.org"}, AllowCidrs: []string{"10.0.0.0/8"}}
	empty := EgressGrant{AllowFqdns: []string{}, AllowCidrs: []string{}}
	tests := []struct {
		name   string
		stderr string
		grant  EgressGrant
		hint   bool
		has    []string
	}{
		{"curl resolve", "curl: (6) Could not resolve host: example.com", grant, true, []string{"Current task grant: pypi.org, 10.0.0.0/8.", "Request access through executionWorkspaceSettings.networkEgress."}},
		{"unreachable", "connect: Network is unreachable", empty, true, []string{"No task-scoped destinations are granted."}},
		{"timeout", "Connection timed out", empty, true, nil},
		{"failed to connect", "curl: (7) Failed to connect to x port 443", empty, true, nil},
		{"dns", "Temporary failure in name resolution", empty, true, nil},
		{"other errors", "permission denied", grant, false, nil},
		{"empty", "", grant, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			h := EgressDenyHint(tt.stderr, tt.grant)
			is.Equal(h != "", tt.hint)
			for _, s := range tt.has {
				is.True(strings.Contains(h, s))
			}
			out := AppendEgressDenyHint(tt.stderr, tt.grant)
			if !tt.hint {
				is.Equal(out, tt.stderr)
			} else {
				is.Equal(out, tt.stderr+"\n"+h)
			}
		})
	}
	is := is.New(t)
	is.Equal(AppendEgressDenyHint("Could not resolve host\n", empty), "Could not resolve host\n"+EgressDenyHint("Could not resolve host", empty))
}

func TestEgressEnv(t *testing.T) {
	is := is.New(t)
	is.Equal(EgressEnv(EgressGrant{AllowFqdns: []string{"a.com", "b.com"}, AllowCidrs: []string{"10.0.0.0/8"}}), map[string]string{
		"PAPERCLIP_NETWORK_EGRESS_POLICY":      "kubernetes-default-deny",
		"PAPERCLIP_NETWORK_EGRESS_GRANT_PATH":  "executionWorkspaceSettings.networkEgress",
		"PAPERCLIP_NETWORK_EGRESS_ALLOW_FQDNS": "a.com,b.com",
		"PAPERCLIP_NETWORK_EGRESS_ALLOW_CIDRS": "10.0.0.0/8",
	})
	is.Equal(EgressEnv(EgressGrant{})[EnvEgressAllowFqdns], "")
}
