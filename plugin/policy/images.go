package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ResolveImage returns the image of a run.
//
//  1. A non-blank override must match one of the allowList globs (see
//     GlobMatch) and is returned unchanged; an empty allowList refuses every
//     override. Error: `Image override "<x>" is not in allowlist`.
//  2. Otherwise, with a registry, the runtime image is rewritten onto it:
//     <registry>/<name>[:tag][@digest], where name is the repository path
//     without the source registry host and its first path segment (the
//     organisation); an image with a single path segment (busybox:1,
//     docker.io/x) keeps that segment. Tags and digests are kept, and an
//     image already under the registry is returned unchanged.
//  3. Otherwise the runtime image is returned.
//
// A non-empty allowList bounds every image a run can use: the image of 2
// or 3 (after the registry rewrite) must match one of its globs too, else
// the error is a *NotAllowedError. An empty allowList allows every runtime
// image.
//
// The registry must be a bare host[:port][/path] (no scheme).
func ResolveImage(override, runtimeImage string, allowList []string, registry string) (string, error) {
	img, err := resolveImage(override, runtimeImage, allowList, registry)
	if err != nil || len(allowList) == 0 || strings.TrimSpace(override) != "" || allowed(img, allowList) {
		return img, err
	}
	return "", &NotAllowedError{Image: img, AllowList: allowList}
}

// NotAllowedError says a run's image matches no imageAllowList pattern.
type NotAllowedError struct {
	Image     string
	AllowList []string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("image %q matches no pattern of imageAllowList %s (a '*' never crosses '/'): add a pattern that matches it, "+
		"point imageRegistry at an allowed registry, or change the adapter's runtimeImage", e.Image, quoteList(e.AllowList))
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func allowed(image string, allowList []string) bool {
	for _, g := range allowList {
		if GlobMatch(g, image) {
			return true
		}
	}
	return false
}

func resolveImage(override, runtimeImage string, allowList []string, registry string) (string, error) {
	if o := strings.TrimSpace(override); o != "" {
		if allowed(o, allowList) {
			return o, nil
		}
		//lint:ignore ST1005 the reference's message, word for word
		return "", fmt.Errorf("Image override %q is not in allowlist", o)
	}
	img := strings.TrimSpace(runtimeImage)
	if img == "" {
		return "", errors.New("no runtime image: the adapter has no runtimeImage")
	}
	reg := strings.TrimSpace(registry)
	if reg == "" {
		return img, nil
	}
	if msg := registryProblem(reg); msg != "" {
		return "", errors.New("imageRegistry " + msg)
	}
	return rewriteRegistry(img, reg)
}

// GlobMatch reports whether value matches the glob pattern, anchored at both
// ends. '*' matches any run of characters except '/', '?' any one character
// except '/'; every other character matches itself. Wildcards therefore
// never cross '/': "ghcr.io/acme/*" matches "ghcr.io/acme/agent:1" but not
// "ghcr.io/acme/team/agent:1".
func GlobMatch(pattern, value string) bool {
	ps := strings.Split(pattern, "/")
	vs := strings.Split(value, "/")
	if len(ps) != len(vs) {
		return false
	}
	for i := range ps {
		if !matchSegment(ps[i], vs[i]) {
			return false
		}
	}
	return true
}

// matchSegment is a '*'/'?' glob match of one '/'-free segment.
func matchSegment(p, v string) bool {
	pr, vr := []rune(p), []rune(v)
	pi, vi := 0, 0
	star, mark := -1, 0
	for vi < len(vr) {
		switch {
		case pi < len(pr) && (pr[pi] == '?' || pr[pi] == vr[vi]):
			pi++
			vi++
		case pi < len(pr) && pr[pi] == '*':
			star, mark = pi, vi
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			vi = mark
		default:
			return false
		}
	}
	for pi < len(pr) && pr[pi] == '*' {
		pi++
	}
	return pi == len(pr)
}

// imageRef is a parsed image reference.
type imageRef struct {
	domain string // "" for the implicit Docker Hub
	path   string // repository path, e.g. "paperclipai/agent-runtime-claude"
	tag    string
	digest string
}

var (
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE        = regexp.MustCompile(`^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}$`)
	hostLabelRE     = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$`)
)

// parseImageRef parses name[:tag][@digest] the way container runtimes do:
// the first path segment is a registry host when it contains '.' or ':', is
// "localhost", or has upper-case letters.
func parseImageRef(s string) (imageRef, error) {
	var r imageRef
	if s == "" {
		return r, errors.New("is empty")
	}
	if strings.Contains(s, "://") {
		return r, errors.New("must not have a URL scheme: drop " + strconv.Quote(s[:strings.Index(s, "://")+3]))
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return r, errors.New("must not contain spaces")
	}
	name := s
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name, r.digest = name[:i], name[i+1:]
		if !digestRE.MatchString(r.digest) {
			return r, fmt.Errorf("has an invalid digest %q (want algorithm:hex, e.g. sha256:…)", r.digest)
		}
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, r.tag = name[:i], name[i+1:]
		if !tagRE.MatchString(r.tag) {
			return r, fmt.Errorf("has an invalid tag %q", r.tag)
		}
	}
	rest := name
	if i := strings.IndexByte(name, '/'); i >= 0 {
		first := name[:i]
		if strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first {
			if msg := hostPortProblem(first); msg != "" {
				return r, fmt.Errorf("has an invalid registry host %q: %s", first, msg)
			}
			r.domain, rest = first, name[i+1:]
		}
	}
	if rest == "" {
		return r, errors.New("has no repository name")
	}
	for _, c := range strings.Split(rest, "/") {
		if !pathComponentRE.MatchString(c) {
			return r, fmt.Errorf("has an invalid path component %q (lowercase letters, digits and single separators . _ __ -)", c)
		}
	}
	r.path = rest
	return r, nil
}

func rewriteRegistry(image, registry string) (string, error) {
	reg := strings.TrimRight(registry, "/")
	if strings.HasPrefix(image, reg+"/") {
		return image, nil
	}
	ref, err := parseImageRef(image)
	if err != nil {
		return "", fmt.Errorf("runtime image %q %s", image, err.Error())
	}
	segs := strings.Split(ref.path, "/")
	if len(segs) > 1 {
		segs = segs[1:]
	}
	out := reg + "/" + strings.Join(segs, "/")
	if ref.tag != "" {
		out += ":" + ref.tag
	}
	if ref.digest != "" {
		out += "@" + ref.digest
	}
	return out, nil
}

// hostPortProblem checks host[:port] of a registry ("" when valid). The host
// is a DNS name, "localhost", an IPv4 address or a bracketed IPv6 address.
func hostPortProblem(hp string) string {
	host, port := hp, ""
	if strings.HasPrefix(hp, "[") {
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return "unclosed '[' in an IPv6 address"
		}
		host, port = hp[1:end], strings.TrimPrefix(hp[end+1:], ":")
		if hp[end+1:] != "" && !strings.HasPrefix(hp[end+1:], ":") {
			return "unexpected characters after the IPv6 address"
		}
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return "invalid IPv6 address"
		}
	} else {
		if i := strings.IndexByte(hp, ':'); i >= 0 {
			host, port = hp[:i], hp[i+1:]
		}
		if host == "" {
			return "no host name"
		}
		for _, l := range strings.Split(host, ".") {
			if !hostLabelRE.MatchString(l) {
				return "invalid host name"
			}
		}
	}
	if port != "" || strings.HasSuffix(hp, ":") {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "the port must be a number from 1 to 65535"
		}
	}
	return ""
}

// registryProblem explains why v is not a bare registry host[:port][/path],
// or returns "" when it is one. The text completes "imageRegistry …".
func registryProblem(v string) string {
	const want = "must be a bare registry host[:port][/path], e.g. registry.example.com:5000/mirror"
	if i := strings.Index(v, "://"); i >= 0 {
		rest := strings.TrimRight(v[i+3:], "/")
		return fmt.Sprintf("must be a bare registry host[:port][/path] without a URL scheme: drop %q and use %q", v[:i+3], rest)
	}
	if v == "" || !utf8.ValidString(v) || strings.ContainsAny(v, " \t\r\n") {
		return want
	}
	if strings.ContainsAny(v, "?#") {
		return want + " (no query or fragment)"
	}
	if strings.Contains(v, "@") {
		return want + " (no user name and no digest)"
	}
	v = strings.TrimSuffix(v, "/")
	hp, path, _ := strings.Cut(v, "/")
	if msg := hostPortProblem(hp); msg != "" {
		return fmt.Sprintf("%s: %s in %q", want, msg, hp)
	}
	if path == "" {
		return ""
	}
	for _, c := range strings.Split(path, "/") {
		if strings.Contains(c, ":") {
			return want + " (no tag: the tag comes from each runtime image)"
		}
		if !pathComponentRE.MatchString(c) {
			return fmt.Sprintf("%s: path component %q must be lowercase letters and digits with single separators . _ __ -", want, c)
		}
	}
	return ""
}

// registryIsDockerHubNamespace reports whether the first segment of a bare
// registry would be read as a Docker Hub namespace instead of a host.
func registryIsDockerHubNamespace(reg string) bool {
	first, _, _ := strings.Cut(reg, "/")
	return !strings.ContainsAny(first, ".:[") && first != "localhost"
}
