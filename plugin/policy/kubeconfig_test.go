package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/matryer/is"
)

// kcSecret is put in every value of the test kubeconfigs: it must never
// appear in a problem.
const kcSecret = "S3CRET-VALUE-7f3a"

// kubeconfigYAML is a kubeconfig with one context; cluster and user are
// the YAML bodies of its cluster and user (indented by 4).
func kubeconfigYAML(cluster, user string) string {
	return `apiVersion: v1
kind: Config
current-context: ctx
clusters:
- name: c
  cluster:
    server: https://api.example.com:6443
` + cluster + `
users:
- name: u
  user:
    token: ` + kcSecret + `
` + user + `
contexts:
- name: ctx
  context: {cluster: c, user: u}
`
}

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func load(t *testing.T, doc string, getenv func(string) string) []string {
	t.Helper()
	_, problems, err := LoadKubeconfig([]byte(doc), KubeconfigTrustFromEnv(getenv))
	if err != nil {
		t.Fatalf("LoadKubeconfig: %v", err)
	}
	for _, p := range problems {
		if strings.Contains(p, kcSecret) {
			t.Fatalf("a problem quotes a kubeconfig value: %s", p)
		}
	}
	return problems
}

func TestKubeconfigRefusesFieldsThatRunOrRead(t *testing.T) {
	cases := []struct {
		name, cluster, user, want string
	}{
		{"exec", "", `    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: /bin/sh
      args: ["-c", "touch /tmp/` + kcSecret + `"]
      interactiveMode: Never`,
			"users[0].user.exec runs a program on the Paperclip host; use a token (users[].user.token) or client-certificate-data/client-key-data instead"},
		{"auth-provider", "", `    auth-provider:
      name: oidc
      config: {idp-issuer-url: "https://` + kcSecret + `"}`,
			"users[0].user.auth-provider runs a credential provider on the Paperclip host"},
		{"empty auth-provider", "", `    auth-provider: {}`, "users[0].user.auth-provider "},
		{"tokenFile", "", `    tokenFile: /var/run/` + kcSecret, "users[0].user.tokenFile reads a file on the Paperclip host"},
		{"client-certificate", "", `    client-certificate: /etc/` + kcSecret + `.crt`, "users[0].user.client-certificate reads a file on the Paperclip host"},
		{"client-key", "", `    client-key: /etc/` + kcSecret + `.key`, "users[0].user.client-key reads a file on the Paperclip host"},
		{"certificate-authority", `    certificate-authority: /etc/` + kcSecret + `.ca`, "", "clusters[0].cluster.certificate-authority reads a file on the Paperclip host"},
		{"proxy-url", `    proxy-url: http://` + kcSecret + `.internal:3128`, "", "clusters[0].cluster.proxy-url sends the API traffic through a proxy"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			doc := kubeconfigYAML(c.cluster, c.user)
			problems := load(t, doc, nil)
			is.Equal(len(problems), 1)
			is.True(strings.HasPrefix(problems[0], c.want))                                                   // names the field by its path, says what it does and the fix
			is.True(strings.Contains(problems[0], EnvAllowKubeconfigCredentialPlugins+"=true on the worker")) // and how an operator allows it
			err := KubeconfigError(problems)
			is.True(strings.HasPrefix(err.Error(), "config field kubeconfig: "+c.want))

			// The operator's switch allows it; anything else does not.
			is.Equal(len(load(t, doc, env(EnvAllowKubeconfigCredentialPlugins, "true"))), 0)
			is.Equal(len(load(t, doc, env(EnvAllowKubeconfigCredentialPlugins, "1"))), 0)
			is.Equal(len(load(t, doc, env(EnvAllowKubeconfigCredentialPlugins, "false"))), 1)
			is.Equal(len(load(t, doc, env(EnvAllowKubeconfigCredentialPlugins, "yes please"))), 1)
			is.Equal(len(load(t, doc, env("OTHER", "true"))), 1)
		})
	}
}

func TestKubeconfigInlineDataIsFine(t *testing.T) {
	is := is.New(t)
	doc := kubeconfigYAML(`    certificate-authority-data: UzNDUkVULVZBTFVFLTdmM2E=
    tls-server-name: api.example.com`, `    client-certificate-data: UzNDUkVULVZBTFVFLTdmM2E=
    client-key-data: UzNDUkVULVZBTFVFLTdmM2E=
    username: admin
    password: `+kcSecret)
	is.Equal(len(load(t, doc, nil)), 0)
}

func TestKubeconfigEveryEntryIsChecked(t *testing.T) {
	is := is.New(t)
	// Entries the current context does not use are checked too, and each
	// is named by its position in the file.
	doc := `apiVersion: v1
kind: Config
current-context: good
clusters:
- name: good
  cluster: {server: "https://api.example.com"}
- name: other
  cluster: {server: "https://api.example.com", certificate-authority: /etc/ca.crt}
users:
- name: good
  user: {token: ` + kcSecret + `}
- name: evil
  user:
    tokenFile: /etc/shadow
    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true, interactiveMode: Never}
contexts:
- name: good
  context: {cluster: good, user: good}
- name: evil
  context: {cluster: other, user: evil}
`
	problems := load(t, doc, nil)
	is.Equal(len(problems), 3)
	is.True(strings.HasPrefix(problems[0], "clusters[1].cluster.certificate-authority "))
	is.True(strings.HasPrefix(problems[1], "users[1].user.exec "))
	is.True(strings.HasPrefix(problems[2], "users[1].user.tokenFile "))
}

func TestKubeconfigNotAKubeconfig(t *testing.T) {
	is := is.New(t)
	for _, s := range []string{"5b0f7c1e-secret-id", "x", "[1, 2]", "clusters: 7"} {
		_, _, err := LoadKubeconfig([]byte(s), KubeconfigTrust{})
		is.True(errors.Is(err, ErrNotKubeconfig))
	}
}

func TestKubeconfigAllowedAPIServers(t *testing.T) {
	const list = "api.example.com, *.k8s.example.org, 10.1.2.3, 10.9.0.0/16, kube.internal:6443, [2001:db8::1]:443, 2001:db8:1::/48"
	cases := []struct {
		server string
		ok     bool
	}{
		{"https://api.example.com", true},
		{"https://API.Example.com.:6443/prefix", true}, // any port, case and trailing dot ignored
		{"https://evil.com/?api.example.com", false},
		{"https://api.example.com.evil.com", false},
		{"https://a.k8s.example.org", true},
		{"https://a.b.k8s.example.org:443", true},
		{"https://k8s.example.org", false}, // the wildcard needs a label
		{"https://xk8s.example.org", false},
		{"https://10.1.2.3:6443", true},
		{"https://10.1.2.4", false},
		{"https://10.9.200.1", true},
		{"https://10.10.0.1", false},
		{"https://[::ffff:10.9.0.1]", true}, // IPv4-mapped: the IPv4 address
		{"https://kube.internal:6443", true},
		{"https://kube.internal", false}, // port 443
		{"http://kube.internal", false},
		{"https://[2001:db8::1]", true},
		{"https://[2001:db8::1]:6443", false},
		{"https://[2001:db8:1::5]:6443", true},
		{"https://169.254.169.254", false},
		{"https://localhost", false},
		{"kube.internal:6443", true}, // no scheme: client-go's reading
		{"api.example.com", false},   // no scheme and no port: http or https? refused
		{"ftp://api.example.com", false},
		{"https://user:pw@10.1.2.3", true},
	}
	for _, c := range cases {
		t.Run(c.server, func(t *testing.T) {
			is := is.New(t)
			doc := strings.Replace(kubeconfigYAML("", ""), "https://api.example.com:6443", c.server, 1)
			problems := load(t, doc, env(EnvAllowedAPIServers, list))
			if c.ok {
				is.Equal(len(problems), 0)
				return
			}
			is.Equal(len(problems), 1)
			is.True(strings.HasPrefix(problems[0], "clusters[0].cluster.server "))
			is.True(strings.Contains(problems[0], EnvAllowedAPIServers))
			is.True(!strings.Contains(problems[0], EnvAllowKubeconfigCredentialPlugins)) // that switch does not help here
			is.True(!strings.Contains(problems[0], "pw"))                                // userinfo never shown
			// Unset or blank: any server.
			is.Equal(len(load(t, doc, nil)), 0)
			is.Equal(len(load(t, doc, env(EnvAllowedAPIServers, "  "))), 0)
			// A list without entries is a mistake: nothing is allowed.
			is.Equal(len(load(t, doc, env(EnvAllowedAPIServers, " , "))), 1)
		})
	}
	t.Run("message", func(t *testing.T) {
		is := is.New(t)
		doc := strings.Replace(kubeconfigYAML("", ""), "https://api.example.com:6443", "http://169.254.169.254/latest", 1)
		problems := load(t, doc, env(EnvAllowedAPIServers, "api.example.com"))
		is.Equal(problems, []string{"clusters[0].cluster.server names an API server host (169.254.169.254:80) that the worker's PAPERCLIP_K8S_ALLOWED_API_SERVERS does not allow; use an API server the operator allows, or ask the operator to add it to PAPERCLIP_K8S_ALLOWED_API_SERVERS"})
	})
}

func TestKubeconfigAllowedAPIServersBadEntry(t *testing.T) {
	for _, bad := range []string{"https://api.example.com", "api.example.com/path", "10.0.0.1/8", "*.", "a:b:c", "host:0", "host:99999", "[::1", "*"} {
		t.Run(bad, func(t *testing.T) {
			is := is.New(t)
			_, err := ParseServerAllowList("api.example.com," + bad)
			is.True(err != nil)
			is.True(strings.Contains(err.Error(), `"`+bad+`"`)) // names the entry
			// Fail closed: no kubeconfig is accepted.
			problems := load(t, kubeconfigYAML("", ""), env(EnvAllowedAPIServers, "api.example.com,"+bad))
			is.Equal(len(problems), 1)
			is.True(strings.HasPrefix(problems[0], "the worker's "+EnvAllowedAPIServers+" entry "))
		})
	}
}

func TestValidateRefusesKubeconfigFields(t *testing.T) {
	exec := kubeconfigYAML("", `    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true, interactiveMode: Never}`)
	t.Run("refused on /kubeconfig", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(map[string]any{"kubeconfig": exec}, testBackends)
		is.Equal(len(errs), 1)
		is.Equal(errs[0].Pointer, "/kubeconfig")
		is.True(strings.HasPrefix(errs[0].Message, "users[0].user.exec runs a program on the Paperclip host"))
		is.True(!strings.Contains(errs[0].Error(), kcSecret))
		_, err := Parse(map[string]any{"kubeconfig": exec}, testBackends)
		is.True(err != nil && strings.Contains(err.Error(), "/kubeconfig: users[0].user.exec "))
	})
	t.Run("allowed by the worker environment", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(map[string]any{"kubeconfig": exec}, testBackends, WithGetenv(env(EnvAllowKubeconfigCredentialPlugins, "true")))
		is.Equal(len(errs), 0)
	})
	t.Run("server not allowed", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(map[string]any{"kubeconfig": kubeconfigYAML("", "")}, testBackends, WithGetenv(env(EnvAllowedAPIServers, "10.0.0.0/8")))
		is.Equal(len(errs), 1)
		is.Equal(errs[0].Pointer, "/kubeconfig")
		is.True(strings.HasPrefix(errs[0].Message, "clusters[0].cluster.server "))
		_, _, _, errs = Validate(map[string]any{"kubeconfig": kubeconfigYAML("", "")}, testBackends, WithGetenv(env(EnvAllowedAPIServers, "*.example.com")))
		is.Equal(len(errs), 0)
	})
	t.Run("a secret id is not checked", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(map[string]any{"kubeconfig": "5b0f7c1e-secret-id"}, testBackends, WithGetenv(env(EnvAllowedAPIServers, "10.0.0.0/8")))
		is.Equal(len(errs), 0)
	})
	t.Run("ignored with inCluster", func(t *testing.T) {
		is := is.New(t)
		_, _, warns, errs := Validate(map[string]any{"kubeconfig": exec, "inCluster": true}, testBackends)
		is.Equal(len(errs), 0)
		is.True(len(warns) > 0) // "inCluster is true, so kubeconfig is ignored"
	})
}
