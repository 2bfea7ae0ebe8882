package policy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// Worker environment variables: set by the operator who runs Paperclip,
// never by a company admin, so they are trusted.
const (
	// EnvAllowKubeconfigCredentialPlugins, when "true", lets a config's
	// kubeconfig use the fields that run a program or read a host file
	// (exec, auth-provider, tokenFile, client-certificate, client-key,
	// certificate-authority) and proxy-url. Only for a Paperclip that serves
	// one trusted company: these run with the worker's user and environment.
	EnvAllowKubeconfigCredentialPlugins = "PAPERCLIP_K8S_ALLOW_KUBECONFIG_CREDENTIAL_PLUGINS"
	// EnvAllowedAPIServers restricts the API servers a config's kubeconfig
	// may name: a comma-separated list of host names, *.suffix wildcards,
	// host:port, IP literals and CIDRs. Unset or blank: any server.
	EnvAllowedAPIServers = "PAPERCLIP_K8S_ALLOWED_API_SERVERS"
)

// KubeconfigTrust is what the operator allows a kubeconfig from a config.
type KubeconfigTrust struct {
	// AllowCredentialPlugins allows the fields that run a program or read a
	// host file, and proxy-url.
	AllowCredentialPlugins bool
	// Servers restricts the API servers; nil allows any.
	Servers *ServerAllowList
	// EnvProblem is set when EnvAllowedAPIServers cannot be parsed: every
	// kubeconfig is then refused (fail closed).
	EnvProblem string
}

// KubeconfigTrustFromEnv reads the worker environment through getenv (nil
// reads nothing: the strict defaults).
func KubeconfigTrustFromEnv(getenv func(string) string) KubeconfigTrust {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var t KubeconfigTrust
	t.AllowCredentialPlugins, _ = strconv.ParseBool(strings.TrimSpace(getenv(EnvAllowKubeconfigCredentialPlugins)))
	if raw := getenv(EnvAllowedAPIServers); strings.TrimSpace(raw) != "" {
		l, err := ParseServerAllowList(raw)
		if err != nil {
			t.EnvProblem = fmt.Sprintf("the worker's %s %v; the operator must fix it (no kubeconfig is accepted until then)", EnvAllowedAPIServers, err)
		} else {
			t.Servers = l
		}
	}
	return t
}

// kubeconfigField is one field of a kubeconfig entry that runs a program, reads
// a host file or picks a network hop.
type kubeconfigField struct {
	name string // as in the kubeconfig YAML
	what string // what it does, and the fix
}

var (
	fieldExec = kubeconfigField{"exec",
		"runs a program on the Paperclip host; use a token (users[].user.token) or client-certificate-data/client-key-data instead"}
	fieldAuthProvider = kubeconfigField{"auth-provider",
		"runs a credential provider on the Paperclip host (token refreshers, network calls); use a token (users[].user.token) or client-certificate-data/client-key-data instead"}
	fieldTokenFile = kubeconfigField{"tokenFile",
		"reads a file on the Paperclip host and sends it as a bearer token; put the token itself in users[].user.token instead"}
	fieldClientCert = kubeconfigField{"client-certificate",
		"reads a file on the Paperclip host; put the certificate inline with client-certificate-data (base64 PEM) instead"}
	fieldClientKey = kubeconfigField{"client-key",
		"reads a file on the Paperclip host; put the key inline with client-key-data (base64 PEM) instead"}
	fieldCA = kubeconfigField{"certificate-authority",
		"reads a file on the Paperclip host; put the CA certificate inline with certificate-authority-data (base64 PEM) instead"}
	fieldProxyURL = kubeconfigField{"proxy-url",
		"sends the API traffic through a proxy of the config's choosing, from the Paperclip host's network; remove it (the worker connects to the server directly)"}
)

// ErrNotKubeconfig is returned by LoadKubeconfig for data that does not
// parse as a kubeconfig. It quotes nothing of the data.
var ErrNotKubeconfig = errors.New("the value is not a kubeconfig")

// LoadKubeconfig parses a kubeconfig given as config data (as client-go
// does, with clientcmd.Load) and checks every cluster, user and context in
// it against trust. problems names each refused field by its kubeconfig
// path ("users[0].user.exec ...") and never quotes a value; the config may
// be used only when problems is empty. err is ErrNotKubeconfig when data
// does not parse.
func LoadKubeconfig(data []byte, trust KubeconfigTrust) (cfg *clientcmdapi.Config, problems []string, err error) {
	cfg, err = clientcmd.Load(data)
	if err != nil || cfg == nil {
		// The parser's message may quote the document.
		return nil, nil, ErrNotKubeconfig
	}
	order := kubeconfigOrder(data)
	if trust.EnvProblem != "" {
		problems = append(problems, trust.EnvProblem)
	}
	plugins := false // a field EnvAllowKubeconfigCredentialPlugins would allow
	refuse := func(path string, f kubeconfigField) {
		plugins = true
		problems = append(problems, path+"."+f.name+" "+f.what)
	}
	for _, name := range sortedByFile(cfg.Clusters, order.clusters) {
		c := cfg.Clusters[name]
		if c == nil {
			continue
		}
		at := fmt.Sprintf("clusters[%s].cluster", order.index(order.clusters, name))
		if !trust.AllowCredentialPlugins {
			if c.CertificateAuthority != "" {
				refuse(at, fieldCA)
			}
			if c.ProxyURL != "" {
				refuse(at, fieldProxyURL)
			}
		}
		if trust.Servers != nil && c.Server != "" {
			switch host, ok := trust.Servers.allows(c.Server); {
			case host == "":
				problems = append(problems, fmt.Sprintf("%s.server is not an http(s) URL with a host (and, without a scheme, a port), so the worker's %s cannot allow it; write https://host[:port]",
					at, EnvAllowedAPIServers))
			case !ok:
				problems = append(problems, fmt.Sprintf("%s.server names an API server host (%s) that the worker's %s does not allow; use an API server the operator allows, or ask the operator to add it to %s",
					at, host, EnvAllowedAPIServers, EnvAllowedAPIServers))
			}
		}
	}
	for _, name := range sortedByFile(cfg.AuthInfos, order.users) {
		u := cfg.AuthInfos[name]
		if u == nil || trust.AllowCredentialPlugins {
			continue
		}
		at := fmt.Sprintf("users[%s].user", order.index(order.users, name))
		if u.Exec != nil {
			refuse(at, fieldExec)
		}
		if u.AuthProvider != nil {
			refuse(at, fieldAuthProvider)
		}
		if u.TokenFile != "" {
			refuse(at, fieldTokenFile)
		}
		if u.ClientCertificate != "" {
			refuse(at, fieldClientCert)
		}
		if u.ClientKey != "" {
			refuse(at, fieldClientKey)
		}
	}
	// Contexts only name a cluster, a user and a namespace: nothing to run
	// or read. LocationOfOrigin is set by file loaders, never by Load.
	if plugins {
		problems[len(problems)-1] += " (an operator who runs Paperclip for one trusted company can allow these fields with " + EnvAllowKubeconfigCredentialPlugins + "=true on the worker)"
	}
	return cfg, problems, nil
}

// KubeconfigUnusable says what keeps a parsed kubeconfig from naming a
// cluster to talk to ("" when nothing does): its current-context must name
// a context whose cluster has a server. It quotes names only, never
// credentials.
func KubeconfigUnusable(cfg *clientcmdapi.Config) string {
	switch {
	case cfg.CurrentContext == "":
		return "it has no current-context; set current-context to the context to use"
	case cfg.Contexts[cfg.CurrentContext] == nil:
		return fmt.Sprintf("its current-context %q names no context in contexts[]; add that context or set current-context to one that exists", cfg.CurrentContext)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	cl := cfg.Clusters[ctx.Cluster]
	switch {
	case ctx.Cluster == "" || cl == nil:
		return fmt.Sprintf("context %q names cluster %q, which is not in clusters[]; add the cluster (server and certificate-authority-data)", cfg.CurrentContext, ctx.Cluster)
	case strings.TrimSpace(cl.Server) == "":
		return fmt.Sprintf("cluster %q has no server; set clusters[].cluster.server to the API server's https URL", ctx.Cluster)
	case ctx.AuthInfo != "" && cfg.AuthInfos[ctx.AuthInfo] == nil:
		return fmt.Sprintf("context %q names user %q, which is not in users[]; add the user (e.g. a token)", cfg.CurrentContext, ctx.AuthInfo)
	}
	return ""
}

// looksLikeDocument tells a kubeconfig document (several lines) from a
// secret reference the host may send at validation (one token).
func looksLikeDocument(s string) bool { return strings.Contains(strings.TrimSpace(s), "\n") }

// KubeconfigError is the error of refused kubeconfig fields, for the hooks.
func KubeconfigError(problems []string) error {
	return fmt.Errorf("config field kubeconfig: %s", strings.Join(problems, "; "))
}

// kubeconfigNames is the order of the named entries in the document, for
// the error paths (clientcmd.Load keeps them in maps).
type kubeconfigNames struct {
	clusters, users []string
}

func kubeconfigOrder(data []byte) kubeconfigNames {
	var doc struct {
		Clusters []struct {
			Name string `json:"name"`
		} `json:"clusters"`
		Users []struct {
			Name string `json:"name"`
		} `json:"users"`
	}
	_ = yaml.Unmarshal(data, &doc)
	var o kubeconfigNames
	for _, c := range doc.Clusters {
		o.clusters = append(o.clusters, c.Name)
	}
	for _, u := range doc.Users {
		o.users = append(o.users, u.Name)
	}
	return o
}

// index returns the position of name in list as a string ("?" when not
// found; a name is never quoted).
func (kubeconfigNames) index(list []string, name string) string {
	for i, n := range list {
		if n == name {
			return strconv.Itoa(i)
		}
	}
	return "?"
}

// sortedByFile returns the keys of m in the order of the document.
func sortedByFile[T any](m map[string]T, order []string) []string {
	out := make([]string, 0, len(m))
	seen := map[string]bool{}
	for _, n := range order {
		if _, ok := m[n]; ok && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	var rest []string
	for n := range m {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// ServerAllowList is a parsed EnvAllowedAPIServers.
type ServerAllowList struct {
	rules []serverRule
}

type serverRule struct {
	name   string       // exact host name (lowercase, no trailing dot)
	suffix string       // "*.example.com" is ".example.com"
	addr   netip.Addr   // an IP literal
	prefix netip.Prefix // a CIDR
	port   string       // "" matches any port
}

// ParseServerAllowList parses a comma-separated list of host names,
// *.suffix wildcards (one or more labels before the suffix), host:port
// (also *.suffix:port, [v6]:port), IP literals and CIDRs. Host names match
// by name only (nothing is resolved); IP and CIDR entries match servers
// given as IP literals.
func ParseServerAllowList(raw string) (*ServerAllowList, error) {
	l := &ServerAllowList{}
	for _, e := range strings.Split(raw, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		r, err := parseServerRule(e)
		if err != nil {
			return nil, fmt.Errorf("entry %q %v", e, err)
		}
		l.rules = append(l.rules, r)
	}
	if len(l.rules) == 0 {
		return nil, errors.New("has no entries")
	}
	return l, nil
}

func parseServerRule(e string) (serverRule, error) {
	var r serverRule
	if strings.Contains(e, "://") {
		return r, errors.New("has a URL scheme: give a host name, *.suffix, host:port, an IP address or a CIDR")
	}
	if strings.Contains(e, "/") {
		p, err := ParseCIDR(e)
		if err != nil {
			return r, err
		}
		r.prefix = p
		return r, nil
	}
	host := e
	switch {
	case strings.HasPrefix(e, "["):
		if h, p, err := net.SplitHostPort(e); err == nil {
			host, r.port = h, p
		} else if strings.HasSuffix(e, "]") {
			host = e[1 : len(e)-1]
		} else {
			return r, errors.New("is not a valid [IPv6]:port")
		}
	case strings.Count(e, ":") == 1:
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			return r, errors.New("is not a valid host:port")
		}
		host, r.port = h, p
	}
	if r.port != "" {
		if n, err := strconv.Atoi(r.port); err != nil || n < 1 || n > 65535 {
			return r, errors.New("has a port that is not a number from 1 to 65535")
		}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		r.addr = a.Unmap().WithZone("")
		return r, nil
	}
	if strings.Contains(host, ":") {
		return r, errors.New("is not a valid IP address, host name or host:port")
	}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		f, err := canonicalFqdn(rest)
		if err != nil {
			return r, fmt.Errorf("is not a valid *.suffix wildcard: the suffix %v", err)
		}
		r.suffix = "." + f
		return r, nil
	}
	if strings.Contains(host, "*") {
		return r, errors.New("is not a valid wildcard: write *.suffix, e.g. *.k8s.example.com")
	}
	f, err := canonicalFqdn(host)
	if err != nil {
		return r, err
	}
	r.name = f
	return r, nil
}

// allows reports whether a kubeconfig cluster's server URL is allowed, and
// returns the server's host:port for messages ("" when it has none).
func (l *ServerAllowList) allows(server string) (string, bool) {
	host, port, ok := serverHostPort(server)
	if !ok {
		return "", false
	}
	shown := host
	if strings.Contains(host, ":") {
		shown = "[" + host + "]"
	}
	shown += ":" + port
	addr, err := netip.ParseAddr(host)
	isIP := err == nil
	if isIP {
		addr = addr.Unmap().WithZone("")
	}
	for _, r := range l.rules {
		if r.port != "" && r.port != port {
			continue
		}
		switch {
		case r.prefix.IsValid():
			if isIP && r.prefix.Contains(addr) {
				return shown, true
			}
		case r.addr.IsValid():
			if isIP && r.addr == addr {
				return shown, true
			}
		case r.suffix != "":
			if !isIP && strings.HasSuffix(host, r.suffix) && len(host) > len(r.suffix) {
				return shown, true
			}
		case r.name != "":
			if !isIP && host == r.name {
				return shown, true
			}
		}
	}
	return shown, false
}

// serverHostPort returns the host (lowercase, no trailing dot, IPv6 without
// brackets) and port of a kubeconfig server URL, read as client-go reads it
// (a server without scheme needs a port).
func serverHostPort(server string) (host, port string, ok bool) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme == "" || u.Host == "" {
		// client-go picks http or https by whether TLS is configured: only
		// an explicit port says where it connects.
		u, err = url.Parse("https://" + server)
		if err != nil || u.Port() == "" {
			return "", "", false
		}
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		port = "443"
	case "http":
		port = "80"
	default:
		return "", "", false
	}
	host = strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "" {
		return "", "", false
	}
	if p := u.Port(); p != "" {
		port = p
	}
	return host, port, true
}

// WithGetenv gives Validate the worker environment (the operator's
// settings, e.g. EnvAllowedAPIServers). Without it Validate reads none:
// the strict defaults.
func WithGetenv(getenv func(string) string) Option {
	return func(o *options) { o.getenv = getenv }
}

// checkKubeconfig reports the kubeconfig fields the operator does not allow,
// on /kubeconfig. At validation time the host may send a secret id instead
// of the YAML: only a value that parses as a kubeconfig is checked.
func (v *validation) checkKubeconfig(o options) {
	if v.secret == "" || v.cfg.InCluster || v.bad(secretPointer) {
		return
	}
	kc, problems, err := LoadKubeconfig([]byte(v.secret), KubeconfigTrustFromEnv(o.getenv))
	switch {
	case err != nil && looksLikeDocument(v.secret):
		v.add(secretPointer, "is not a kubeconfig YAML (it does not parse); paste a complete kubeconfig whose current-context names a cluster (with server) and a user")
	case err != nil:
		return // a secret reference: checked once the host resolves it (probe, hooks)
	case len(problems) > 0:
		v.add(secretPointer, strings.Join(problems, "; "))
	default:
		if why := KubeconfigUnusable(kc); why != "" {
			v.add(secretPointer, "is not usable: "+why)
		}
	}
}
