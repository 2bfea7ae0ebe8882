package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// EgressGrantPath is where a task's egress grant lives in the acquire
// params; it is also exported to the sandbox as
// PAPERCLIP_NETWORK_EGRESS_GRANT_PATH.
const EgressGrantPath = "executionWorkspaceSettings.networkEgress"

// Environment keys describing the egress policy to the agent.
const (
	EnvEgressPolicy     = "PAPERCLIP_NETWORK_EGRESS_POLICY"
	EnvEgressGrantPath  = "PAPERCLIP_NETWORK_EGRESS_GRANT_PATH"
	EnvEgressAllowFqdns = "PAPERCLIP_NETWORK_EGRESS_ALLOW_FQDNS"
	EnvEgressAllowCidrs = "PAPERCLIP_NETWORK_EGRESS_ALLOW_CIDRS"

	EgressPolicyValue = "kubernetes-default-deny"
)

// EgressGrant is a task-scoped egress grant. Both lists are non-nil (they
// marshal as []), de-duplicated, FQDNs lowercase without trailing dot,
// CIDRs canonical.
type EgressGrant struct {
	AllowFqdns []string `json:"allowFqdns"`
	AllowCidrs []string `json:"allowCidrs"`
}

// Empty reports whether the grant allows nothing.
func (g EgressGrant) Empty() bool { return len(g.AllowFqdns) == 0 && len(g.AllowCidrs) == 0 }

// ParseEgressGrant reads executionWorkspaceSettings.networkEgress
// {allowFqdns, allowCidrs}. As in the reference, only strings count; they
// are trimmed, blank ones dropped and the rest de-duplicated, and anything
// malformed gives empty lists. Unlike the reference, FQDNs are lowercased
// before de-duplication, invalid host names and CIDRs (checked with
// net/netip; bare addresses become /32 or /128) are dropped, and each
// dropped value yields a warning. A nil map or an absent networkEgress gives
// an empty grant and no warning.
func ParseEgressGrant(executionWorkspaceSettings map[string]any) (EgressGrant, []string) {
	g := EgressGrant{AllowFqdns: []string{}, AllowCidrs: []string{}}
	raw, ok := executionWorkspaceSettings["networkEgress"]
	if !ok || raw == nil {
		return g, nil
	}
	ne, ok := raw.(map[string]any)
	if !ok {
		return g, []string{fmt.Sprintf("%s is not an object; no task-scoped egress is granted", EgressGrantPath)}
	}
	var warns []string
	seen := map[string]bool{}
	for _, it := range grantStrings(ne, "allowFqdns", &warns) {
		f, err := canonicalFqdn(it.s)
		if err != nil {
			warns = append(warns, fmt.Sprintf("%s.allowFqdns[%d] %s %s; it is ignored", EgressGrantPath, it.i, shortQuote(it.s), err))
			continue
		}
		if !seen[f] {
			seen[f] = true
			g.AllowFqdns = append(g.AllowFqdns, f)
		}
	}
	seen = map[string]bool{}
	for _, it := range grantStrings(ne, "allowCidrs", &warns) {
		p, err := parseGrantCIDR(it.s)
		if err != nil {
			warns = append(warns, fmt.Sprintf("%s.allowCidrs[%d] %s %s; it is ignored", EgressGrantPath, it.i, shortQuote(it.s), err))
			continue
		}
		if c := p.String(); !seen[c] {
			seen[c] = true
			g.AllowCidrs = append(g.AllowCidrs, c)
		}
	}
	return g, warns
}

type indexedString struct {
	i int
	s string
}

// grantStrings returns the non-blank trimmed strings of ne[key] with their
// input indexes. Blank strings are dropped silently (as in the reference);
// non-strings and a non-array value are dropped with a warning.
func grantStrings(ne map[string]any, key string, warns *[]string) []indexedString {
	raw, ok := ne[key]
	if !ok || raw == nil {
		return nil
	}
	arr, ok := raw.([]any)
	if !ok {
		*warns = append(*warns, fmt.Sprintf("%s.%s is not an array; it is ignored", EgressGrantPath, key))
		return nil
	}
	var out []indexedString
	for i, v := range arr {
		s, ok := v.(string)
		if !ok {
			*warns = append(*warns, fmt.Sprintf("%s.%s[%d] is not a string; it is ignored", EgressGrantPath, key, i))
			continue
		}
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, indexedString{i, s})
		}
	}
	return out
}

// parseGrantCIDR is ParseCIDR that also takes a bare address as /32 or /128.
func parseGrantCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			a = a.Unmap()
			return netip.PrefixFrom(a, a.BitLen()), nil
		}
	}
	return ParseCIDR(s)
}

var errBlank = errors.New("is blank")

var (
	fqdnRE = regexp.MustCompile(`^([a-z0-9_]([a-z0-9_-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	// denyHintRE is the reference's trigger for the egress deny hint.
	denyHintRE = regexp.MustCompile(`(?i)(could not resolve host|network is unreachable|connection timed out|failed to connect|temporary failure in name resolution)`)
)

// canonicalFqdn lowercases a host name and drops a trailing dot; it fails
// for anything that is not a plain host name (wildcards, schemes, ports,
// paths, IP addresses).
func canonicalFqdn(s string) (string, error) {
	f := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	switch {
	case f == "":
		return "", errBlank
	case strings.Contains(f, "://"):
		return "", errors.New("has a URL scheme; give the bare host name, e.g. api.example.com")
	case strings.Contains(f, "*"):
		return "", errors.New("is a wildcard; wildcards are not supported, list each host name")
	case strings.ContainsAny(f, "/:"):
		if _, err := netip.ParsePrefix(f); err == nil {
			return "", errors.New("is a CIDR; put it in the CIDR list instead")
		}
		if _, err := netip.ParseAddr(f); err == nil {
			return "", errors.New("is an IP address; put it in the CIDR list instead")
		}
		return "", errors.New("has a port or path; give the bare host name, e.g. api.example.com")
	case len(f) > 253:
		return "", errors.New("is longer than 253 characters")
	}
	if _, err := netip.ParseAddr(f); err == nil {
		return "", errors.New("is an IP address; put it in the CIDR list instead (e.g. " + f + "/32)")
	}
	if !fqdnRE.MatchString(f) {
		return "", errors.New("is not a valid host name")
	}
	for _, l := range strings.Split(f, ".") {
		if len(l) > 63 {
			return "", errors.New("has a label longer than 63 characters")
		}
	}
	return f, nil
}

// canonicalFqdns canonicalizes and de-duplicates host names, keeping invalid
// ones lowercased as they are (they were rejected by validation).
func canonicalFqdns(in []string) []string {
	out := make([]string, 0, len(in))
	seen := map[string]bool{}
	for _, s := range in {
		f, err := canonicalFqdn(s)
		if err != nil {
			f = strings.ToLower(strings.TrimSpace(s))
		}
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

// ParseCIDR parses an IPv4 or IPv6 CIDR strictly: prefix length in range, no
// zone, no IPv4-mapped IPv6, no host bits set (Kubernetes treats such values
// as ambiguous). Errors say what to write instead.
func ParseCIDR(s string) (netip.Prefix, error) {
	addrPart, bitsPart, ok := strings.Cut(s, "/")
	if !ok {
		if a, err := netip.ParseAddr(s); err == nil {
			return netip.Prefix{}, fmt.Errorf("is an address, not a CIDR: add the prefix length, e.g. %s/%d", a.Unmap(), a.Unmap().BitLen())
		}
		return netip.Prefix{}, errors.New("is not a CIDR: write address/prefix-length, e.g. 10.20.0.0/16 or 2001:db8::/48")
	}
	a, err := netip.ParseAddr(addrPart)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("is not a valid CIDR: %q is not an IPv4 or IPv6 address", addrPart)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, errors.New("is not a valid CIDR: remove the zone (%…)")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("is not a valid CIDR: the prefix length %q must be a number from 0 to %d", bitsPart, a.BitLen())
	}
	if a.Is4In6() {
		u := netip.PrefixFrom(a.Unmap(), max(p.Bits()-96, 0)).Masked()
		return netip.Prefix{}, fmt.Errorf("is an IPv4-mapped IPv6 CIDR: write the IPv4 form, e.g. %s", u)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("has bits set after the prefix length, which is ambiguous: use %s (the whole network) or %s/%d (the single address)", m, a, a.BitLen())
	}
	return p, nil
}

// EgressDenyHint returns the hint to append to a command's stderr when it
// looks like a network failure (could not resolve host, network is
// unreachable, connection timed out, failed to connect, temporary failure in
// name resolution), else "". The hint names the task grant and how to ask
// for more.
func EgressDenyHint(stderr string, grant EgressGrant) string {
	if !denyHintRE.MatchString(stderr) {
		return ""
	}
	var b strings.Builder
	b.WriteString("Paperclip network policy denied or could not route this request. ")
	if grant.Empty() {
		b.WriteString("No task-scoped destinations are granted.")
	} else {
		b.WriteString("Current task grant: ")
		b.WriteString(strings.Join(append(append([]string{}, grant.AllowFqdns...), grant.AllowCidrs...), ", "))
		b.WriteString(".")
	}
	b.WriteString(" Request access through " + EgressGrantPath + ".")
	return b.String()
}

// AppendEgressDenyHint returns stderr followed by EgressDenyHint on its own
// line when there is a hint, else stderr unchanged.
func AppendEgressDenyHint(stderr string, grant EgressGrant) string {
	h := EgressDenyHint(stderr, grant)
	if h == "" {
		return stderr
	}
	if stderr != "" && !strings.HasSuffix(stderr, "\n") {
		stderr += "\n"
	}
	return stderr + h
}

// EgressEnv returns the four PAPERCLIP_NETWORK_EGRESS_* entries of a run's
// Secret (lists comma-joined).
func EgressEnv(grant EgressGrant) map[string]string {
	return map[string]string{
		EnvEgressPolicy:     EgressPolicyValue,
		EnvEgressGrantPath:  EgressGrantPath,
		EnvEgressAllowFqdns: strings.Join(grant.AllowFqdns, ","),
		EnvEgressAllowCidrs: strings.Join(grant.AllowCidrs, ","),
	}
}
