package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

var testBackends = []string{"sandbox", "job"}

const fixtureDir = "../../testdata/config"

func fixture(t *testing.T, name string) json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func schemaDoc(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(schemas.ConfigSchema))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func pointers(errs []FieldError) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Pointer)
	}
	return out
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var x, y any
	_ = json.Unmarshal(ja, &x)
	_ = json.Unmarshal(jb, &y)
	return reflect.DeepEqual(x, y)
}

func TestSchemaIsAPlainManifestSchema(t *testing.T) {
	is := is.New(t)
	doc := schemaDoc(t)
	is.Equal(doc["type"], "object")             // the host requires type (or $ref/anyOf/…)
	is.Equal(doc["additionalProperties"], true) // host-owned keys are tolerated
	is.True(doc["anyOf"] != nil)                // inCluster or kubeconfig
	props := doc["properties"].(map[string]any)
	kube := props["kubeconfig"].(map[string]any)
	is.Equal(kube["format"], "secret-ref")

	// Only keywords that mean the same in draft-07 and 2020-12, no $ref: any
	// JSON Schema consumer (the host UI, ajv) reads it the same way.
	portable := map[string]bool{
		"title": true, "description": true, "type": true, "properties": true, "additionalProperties": true,
		"items": true, "required": true, "anyOf": true, "enum": true, "pattern": true, "minLength": true,
		"maxLength": true, "minimum": true, "maximum": true, "default": true, "format": true,
		"propertyNames": true, "minProperties": true,
	}
	var walk func(ptr string, n map[string]any)
	walk = func(ptr string, n map[string]any) {
		for k, v := range n {
			if !portable[k] {
				t.Errorf("%s: keyword %q is outside the portable subset", ptr, k)
			}
			switch k {
			case "properties":
				for name, sub := range v.(map[string]any) {
					walk(ptr+"/properties/"+name, sub.(map[string]any))
				}
			case "items", "additionalProperties", "propertyNames":
				if sub, ok := v.(map[string]any); ok {
					walk(ptr+"/"+k, sub)
				}
			case "anyOf":
				for i, sub := range v.([]any) {
					walk(fmt.Sprintf("%s/anyOf/%d", ptr, i), sub.(map[string]any))
				}
			}
		}
	}
	walk("", doc)
}

func TestSchemaEveryFieldDocumented(t *testing.T) {
	doc := schemaDoc(t)
	props := doc["properties"].(map[string]any)
	// The reference's fields (inventory §1) plus the ones this plugin adds.
	want := []string{
		"inCluster", "kubeconfig", "namespacePrefix", "companySlug", "imageRegistry", "imageAllowList",
		"imagePullSecrets", "egressAllowFqdns", "egressAllowCidrs", "egressMode", "defaultResources",
		"runtimeClassName", "serviceAccountAnnotations", "jobTtlSecondsAfterFinished", "podActivityDeadlineSec",
		"adapterType", "adapters", "backend",
		"paperclipServerNamespace", "paperclipServerPodLabels", "paperclipServerPort", "workspacePath",
		"sandboxLifetimeSec", "execMaxOutputBytes", "imagePullPolicy", "nodeSelector", "resourceQuota", "reusableLeaseIdleSec",
		"standbyLeases", "tenantLimits", "warmPoolSize",
	}
	is := is.New(t)
	is.Equal(slices.Sorted(maps.Keys(props)), slices.Sorted(slices.Values(want)))
	noDefault := map[string]bool{"kubeconfig": true, "companySlug": true, "imageRegistry": true, "runtimeClassName": true, "adapters": true}
	for name, p := range props {
		p := p.(map[string]any)
		if d, _ := p["description"].(string); len(d) < 20 {
			t.Errorf("%s: no useful description", name)
		}
		if _, ok := p["default"]; ok == noDefault[name] {
			t.Errorf("%s: default present = %v, want %v", name, ok, !noDefault[name])
		}
	}
}

// Every pattern of the schema has its own explanation.
func TestSchemaEveryPatternHasAHint(t *testing.T) {
	doc := schemaDoc(t)
	var walk func(loc string, n map[string]any)
	walk = func(loc string, n map[string]any) {
		if _, ok := n["pattern"]; ok {
			if h := patternHint(loc, "x y"); h == "has an invalid format" {
				t.Errorf("%s: pattern has no hint", loc)
			}
		}
		for _, k := range []string{"properties"} {
			if m, ok := n[k].(map[string]any); ok {
				for name, sub := range m {
					walk(loc+"/properties/"+name, sub.(map[string]any))
				}
			}
		}
		for _, k := range []string{"items", "additionalProperties", "propertyNames"} {
			if sub, ok := n[k].(map[string]any); ok {
				walk(loc+"/"+k, sub)
			}
		}
	}
	walk("", doc)
}

func TestDefaultsAppearInNormalized(t *testing.T) {
	is := is.New(t)
	_, norm, _, errs := Validate(map[string]any{"inCluster": true}, testBackends)
	is.Equal(len(errs), 0)
	props := schemaDoc(t)["properties"].(map[string]any)
	n := 0
	for name, p := range props {
		d, ok := p.(map[string]any)["default"]
		if !ok || name == "inCluster" {
			continue
		}
		n++
		got, present := norm[name]
		if !present {
			t.Errorf("%s: default missing from normalized config", name)
			continue
		}
		if !jsonEqual(t, got, d) {
			t.Errorf("%s: normalized %v, schema default %v", name, got, d)
		}
	}
	is.True(n >= 20)
}

// The typed Config agrees with the schema defaults.
func TestConfigDefaults(t *testing.T) {
	is := is.New(t)
	cfg, _, _, errs := Validate(map[string]any{"inCluster": true}, testBackends)
	is.Equal(len(errs), 0)
	is.Equal(cfg.NamespacePrefix, "paperclip-")
	is.Equal(cfg.EgressMode, EgressModeStandard)
	is.Equal(cfg.Backend, BackendSandbox)
	is.Equal(cfg.AdapterType, "claude_local")
	is.Equal(cfg.PaperclipServerNamespace, "paperclip")
	is.Equal(cfg.PaperclipServerPodLabels, map[string]string{"app": "paperclip-server"})
	is.Equal(cfg.PaperclipServerPort, 3100)
	is.Equal(cfg.WorkspacePath, "/workspace")
	is.Equal(cfg.SandboxLifetimeSec, 86400)
	is.Equal(cfg.PodActivityDeadlineSec, 3600)
	is.Equal(cfg.JobTTLSecondsAfterFinished, 900)
	is.Equal(cfg.ExecMaxOutputBytes, int64(64<<20))
	is.Equal(cfg.ImagePullPolicy, "IfNotPresent")
	is.Equal(cfg.DefaultResources, Resources{
		Requests: ResourceList{CPU: "250m", Memory: "512Mi"},
		Limits:   ResourceList{CPU: "2", Memory: "4Gi"},
	})
	is.Equal(cfg.EgressAllowCidrs, []string{})
	is.Equal(cfg.EgressAllowFqdns, []string{})
	is.Equal(cfg.ImageAllowList, []string{})
	is.Equal(cfg.ImagePullSecrets, []string{})
	is.Equal(cfg.NodeSelector, map[string]string{})
	is.Equal(cfg.ServiceAccountAnnotations, map[string]string{})
}

func TestValidFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(fixtureDir, "valid-*.json"))
	if err != nil || len(files) < 5 {
		t.Fatalf("fixtures: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			is := is.New(t)
			raw := fixture(t, filepath.Base(f))
			_, norm, _, errs := Validate(raw, testBackends)
			is.Equal(errs, nil)
			// Normalizing is idempotent.
			_, norm2, _, errs2 := Validate(norm, testBackends)
			is.Equal(errs2, nil)
			is.True(jsonEqual(t, norm, norm2))
			// Every input key survives (host-owned ones included).
			var in map[string]any
			is.NoErr(json.Unmarshal(raw, &in))
			for k := range in {
				_, ok := norm[k]
				is.True(ok)
			}
		})
	}
}

func TestValidFull(t *testing.T) {
	is := is.New(t)
	cfg, norm, warns, errs := Validate(fixture(t, "valid-full.json"), testBackends)
	is.Equal(errs, nil)
	is.Equal(warns, nil) // cilium mode: no egress warning
	is.Equal(cfg.Backend, BackendJob)
	is.Equal(cfg.AdapterType, "codex_local")
	is.Equal(len(cfg.Adapters), 2)
	is.Equal(cfg.Adapters[1].IsEnabled(), false)
	is.Equal(cfg.EgressAllowCidrs, []string{"10.20.0.0/16", "2001:db8::/48"})
	is.Equal(cfg.PaperclipServerPodLabels["app.kubernetes.io/name"], "paperclip")
	is.Equal(cfg.NodeSelector, map[string]string{"paperclip.io/pool": "agents"})
	is.Equal(cfg.DefaultResources.Limits.Memory, "8Gi")
	is.Equal(cfg.ExecMaxOutputBytes, int64(1048576))
	ns, err := cfg.Namespace("ignored-because-companySlug-is-set")
	is.NoErr(err)
	is.Equal(ns, "agents-acme")
	// Every field of the fixture differs from its default.
	for name, p := range schemaDoc(t)["properties"].(map[string]any) {
		if name == "inCluster" || name == "kubeconfig" {
			continue
		}
		d, hasDefault := p.(map[string]any)["default"]
		if _, ok := norm[name]; !ok {
			t.Errorf("valid-full.json lacks %s", name)
		} else if hasDefault && jsonEqual(t, norm[name], d) {
			t.Errorf("valid-full.json sets %s to its default", name)
		}
	}
}

func TestHostOwnedKeysTolerated(t *testing.T) {
	is := is.New(t)
	_, norm, warns, errs := Validate(fixture(t, "valid-host-owned-keys.json"), testBackends)
	is.Equal(errs, nil)
	for _, k := range []string{"timeoutMs", "reuseLease", "runnerLifecycleMode", "runnerIdleTimeoutMs", "archiveOnRelease", "sandboxName", "workspaceRealization", "agentId"} {
		_, ok := norm[k]
		is.True(ok)
		for _, w := range warns {
			is.True(!strings.Contains(w, k)) // no warning about host keys
		}
	}
	is.True(jsonEqual(t, norm["workspaceRealization"], map[string]any{"remote": map[string]any{"path": "/workspace"}}))
}

func TestInvalidReportsEveryError(t *testing.T) {
	tests := []struct {
		name string
		in   json.RawMessage
		want []string // pointers, in order
	}{
		{
			name: "invalid-many.json",
			in:   fixture(t, "invalid-many.json"),
			want: []string{
				"/adapters/0/image",
				"/backend",
				"/defaultResources/requests/cpu",
				"/egressAllowCidrs/2",
				"/egressMode",
				"/imageRegistry",
				"/kubeconfig",
				"/namespacePrefix",
				"/paperclipServerPort",
			},
		},
		{
			name: "invalid-no-credentials.json",
			in:   fixture(t, "invalid-no-credentials.json"),
			want: []string{""},
		},
		{
			name: "invalid-namespace-too-long.json",
			in:   fixture(t, "invalid-namespace-too-long.json"),
			want: []string{"/companySlug"},
		},
		{
			name: "cidr errors found by the schema and by net/netip together",
			in:   json.RawMessage(`{"inCluster":true,"egressAllowCidrs":["10.0.0.0/8","x","300.1.1.1/8","10.1.2.3/8","::ffff:10.0.0.0/104","fd00::/8",7]}`),
			want: []string{"/egressAllowCidrs/1", "/egressAllowCidrs/2", "/egressAllowCidrs/3", "/egressAllowCidrs/4", "/egressAllowCidrs/6"},
		},
		{
			name: "no credentials and a type error at once",
			in:   json.RawMessage(`{"namespacePrefix":7}`),
			want: []string{"", "/namespacePrefix"},
		},
		{
			name: "adapter entries checked one by one",
			in: json.RawMessage(`{"inCluster":true,"adapters":[
				{"adapterType":"a","runtimeImage":"ghcr.io/x/a:1","bogus":1},
				{"adapterType":"b"},
				{"adapterType":"c","runtimeImage":"https://ghcr.io/x/c:1"},
				{"adapterType":"c","runtimeImage":"ghcr.io/x/c:1"},
				{"adapterType":"d","runtimeImage":"ghcr.io/x/d:1","envKeys":["BOOTSTRAP_TOKEN"],"defaultEnv":{"1BAD":"x"}},
				{"runtimeImage":"ghcr.io/x/e:1"}
			]}`),
			want: []string{
				"/adapters/0/bogus", "/adapters/1/runtimeImage", "/adapters/2/runtimeImage", "/adapters/3/adapterType",
				"/adapters/4/defaultEnv/1BAD", "/adapters/5/adapterType",
			},
		},
		{
			name: "reserved env key",
			in:   json.RawMessage(`{"inCluster":true,"adapters":[{"adapterType":"d","runtimeImage":"ghcr.io/x/d:1","envKeys":["OK","BOOTSTRAP_TOKEN"],"defaultEnv":{"PAPERCLIP_NETWORK_EGRESS_POLICY":"open"}}],"adapterType":"d"}`),
			want: []string{"/adapters/0/defaultEnv/PAPERCLIP_NETWORK_EGRESS_POLICY", "/adapters/0/envKeys/1"},
		},
		{
			name: "every adapter disabled",
			in:   json.RawMessage(`{"inCluster":true,"adapters":[{"adapterType":"a","enabled":false}]}`),
			want: []string{"/adapters"},
		},
		{
			name: "unknown built-in adapter",
			in:   json.RawMessage(`{"inCluster":true,"adapterType":"my_agent"}`),
			want: []string{"/adapterType"},
		},
		{
			name: "built-in adapter missing from a non-empty registry",
			in:   json.RawMessage(`{"inCluster":true,"adapterType":"claude_local","adapters":[{"adapterType":"my_agent","runtimeImage":"ghcr.io/x/y:1"}]}`),
			want: []string{"/adapterType"},
		},
		{
			name: "disabled adapter chosen",
			in:   json.RawMessage(`{"inCluster":true,"adapterType":"b","adapters":[{"adapterType":"a","runtimeImage":"ghcr.io/x/a:1"},{"adapterType":"b","enabled":false}]}`),
			want: []string{"/adapterType"},
		},
		{
			name: "fqdn problems",
			in:   json.RawMessage(`{"inCluster":true,"egressAllowFqdns":["api.example.com","*.example.com","https://x.example.com","10.1.2.3","x.example.com:443","ok.example.com."]}`),
			want: []string{"/egressAllowFqdns/1", "/egressAllowFqdns/2", "/egressAllowFqdns/3", "/egressAllowFqdns/4"},
		},
		{
			name: "resources",
			in:   json.RawMessage(`{"inCluster":true,"defaultResources":{"requests":{"cpu":"0","memory":"8Gi"},"limits":{"cpu":"-1"},"other":{}}}`),
			want: []string{"/defaultResources/limits/cpu", "/defaultResources/other", "/defaultResources/requests/cpu", "/defaultResources/requests/memory"},
		},
		{
			name: "workspace path",
			in:   json.RawMessage(`{"inCluster":true,"workspacePath":"/workspace/../etc"}`),
			want: []string{"/workspacePath"},
		},
		{
			name: "workspace path relative",
			in:   json.RawMessage(`{"inCluster":true,"workspacePath":"workspace"}`),
			want: []string{"/workspacePath"},
		},
		{
			name: "label maps",
			in:   json.RawMessage(`{"inCluster":true,"paperclipServerPodLabels":{},"nodeSelector":{"bad key":"v","ok":"not ok!"},"serviceAccountAnnotations":{"a/b/c":"x"}}`),
			want: []string{"/nodeSelector/bad key", "/nodeSelector/ok", "/paperclipServerPodLabels", "/serviceAccountAnnotations/a~1b~1c"},
		},
		{
			name: "numbers",
			in:   json.RawMessage(`{"inCluster":true,"sandboxLifetimeSec":0,"podActivityDeadlineSec":1.5,"jobTtlSecondsAfterFinished":1e30,"execMaxOutputBytes":1e12,"paperclipServerPort":0}`),
			want: []string{"/execMaxOutputBytes", "/jobTtlSecondsAfterFinished", "/paperclipServerPort", "/podActivityDeadlineSec", "/sandboxLifetimeSec"},
		},
		{
			name: "registry problems",
			in:   json.RawMessage(`{"inCluster":true,"imageRegistry":"registry.example.com:99999/Mirror"}`),
			want: []string{"/imageRegistry"},
		},
		{
			name: "wrong types",
			in:   json.RawMessage(`{"inCluster":"yes","egressAllowCidrs":"10.0.0.0/8","adapters":{},"defaultResources":[]}`),
			want: []string{"/adapters", "/defaultResources", "/egressAllowCidrs", "/inCluster"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			_, _, _, errs := Validate(tt.in, testBackends)
			is.Equal(pointers(errs), tt.want)
			for _, e := range errs {
				is.True(len(e.Message) > 10)
				is.True(strings.HasPrefix(e.Error(), e.Pointer))
			}
		})
	}
}

func TestErrorMessagesSayWhatToDo(t *testing.T) {
	_, _, _, errs := Validate(fixture(t, "invalid-many.json"), testBackends)
	msgs := map[string]string{}
	for _, e := range errs {
		msgs[e.Pointer] = e.Message
	}
	tests := []struct {
		ptr  string
		want []string
	}{
		{"/imageRegistry", []string{"without a URL scheme", `drop "https://"`, `"registry.example.com"`}},
		{"/egressAllowCidrs/2", []string{`"10.0.0.0/33"`, "prefix length", "0 to 32"}},
		{"/namespacePrefix", []string{`"Paperclip_"`, "lowercase"}},
		{"/backend", []string{`"firecracker"`, `"job" or "sandbox"`}},
		{"/egressMode", []string{`"calico"`, `"standard" or "cilium"`}},
		{"/adapters/0/image", []string{`unknown field "image"`, "allowed fields"}},
		{"/kubeconfig", []string{"is not usable", "no current-context", "set current-context"}},
		{"/paperclipServerPort", []string{"at most 65535"}},
		{"/defaultResources/requests/cpu", []string{`"lots"`, "quantity"}},
	}
	for _, tt := range tests {
		t.Run(tt.ptr, func(t *testing.T) {
			msg, ok := msgs[tt.ptr]
			if !ok {
				t.Fatalf("no error at %s: %v", tt.ptr, errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
		})
	}
}

func TestIPv6CIDRsAccepted(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"2001:db8::/32", "2001:db8::/32"},
		{"2001:DB8::/32", "2001:db8::/32"},
		{"fd00:10:20::/64", "fd00:10:20::/64"},
		{"::1/128", "::1/128"},
		{"::/0", "::/0"},
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"192.168.1.7/32", "192.168.1.7/32"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			cfg, norm, _, errs := Validate(map[string]any{"inCluster": true, "egressAllowCidrs": []any{tt.in}}, testBackends)
			is.Equal(errs, nil)
			is.Equal(cfg.EgressAllowCidrs, []string{tt.want})
			is.True(jsonEqual(t, norm["egressAllowCidrs"], []string{tt.want}))
		})
	}
}

func TestRegistrySchemeRejected(t *testing.T) {
	tests := []struct {
		in, fix string
	}{
		{"https://registry.example.com", `use "registry.example.com"`},
		{"http://registry.example.com:5000/mirror/", `use "registry.example.com:5000/mirror"`},
		{"oci://reg.example.com", `drop "oci://"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			_, _, _, errs := Validate(map[string]any{"inCluster": true, "imageRegistry": tt.in}, testBackends)
			is.Equal(pointers(errs), []string{"/imageRegistry"})
			is.True(strings.Contains(errs[0].Message, "scheme"))
			is.True(strings.Contains(errs[0].Message, tt.fix))
		})
	}
}

func TestRegistryAccepted(t *testing.T) {
	tests := []struct{ in, want string }{
		{"registry.example.com", "registry.example.com"},
		{"registry.example.com:5000", "registry.example.com:5000"},
		{"registry.example.com:5000/mirror/paperclip/", "registry.example.com:5000/mirror/paperclip"},
		{"localhost:5000", "localhost:5000"},
		{"10.0.0.5:5000/x", "10.0.0.5:5000/x"},
		{"[2001:db8::5]:5000", "[2001:db8::5]:5000"},
		{"docker.io/acme", "docker.io/acme"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			is := is.New(t)
			cfg, _, warns, errs := Validate(map[string]any{"inCluster": true, "imageRegistry": tt.in}, testBackends)
			is.Equal(errs, nil)
			is.Equal(cfg.ImageRegistry, tt.want)
			for _, w := range warns {
				is.True(!strings.Contains(w, "Docker Hub"))
			}
		})
	}
	is := is.New(t)
	_, _, warns, errs := Validate(map[string]any{"inCluster": true, "imageRegistry": "acme"}, testBackends)
	is.Equal(errs, nil)
	is.True(slices.ContainsFunc(warns, func(w string) bool { return strings.Contains(w, "Docker Hub namespace") }))
}

func TestAdaptersOverrideReachable(t *testing.T) {
	is := is.New(t)
	cfg, norm, warns, errs := Validate(fixture(t, "valid-adapters-override.json"), testBackends)
	is.Equal(errs, nil)
	is.Equal(cfg.AdapterType, "my_agent")
	is.Equal(norm["adapterType"], "my_agent")
	// standard mode with the adapter's host name: the reference's warning.
	is.Equal(len(warns), 1)
	is.True(strings.Contains(warns[0], "api.my-agent.dev"))

	d, err := Defaults(ResolveAdapterType("", cfg.AdapterType), cfg.Adapters)
	is.NoErr(err)
	is.Equal(d.RuntimeImage, "ghcr.io/acme/my-agent:1.0.0")
	is.Equal(d.AllowFqdns, []string{"api.my-agent.dev"})
	env := AdapterEnv(d, func(k string) string {
		if k == "MY_AGENT_API_KEY" {
			return "sk-test"
		}
		return ""
	})
	is.Equal(env, map[string]string{"MY_AGENT_MODE": "kubernetes", "MY_AGENT_API_KEY": "sk-test"})
	img, err := ResolveImage("", d.RuntimeImage, cfg.ImageAllowList, cfg.ImageRegistry)
	is.NoErr(err)
	is.Equal(img, "ghcr.io/acme/my-agent:1.0.0")
}

func TestAdapterTypeDefaultWithRegistry(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"no registry", `{"inCluster":true}`, "claude_local"},
		{"registry with claude_local", `{"inCluster":true,"adapters":[{"adapterType":"x","runtimeImage":"a/b:1"},{"adapterType":"claude_local","runtimeImage":"a/c:1"}]}`, "claude_local"},
		{"registry without claude_local", `{"inCluster":true,"adapters":[{"adapterType":"x","enabled":false},{"adapterType":"y","runtimeImage":"a/b:1"}]}`, "y"},
		{"explicit", `{"inCluster":true,"adapterType":"x","adapters":[{"adapterType":"y","runtimeImage":"a/b:1"},{"adapterType":"x","runtimeImage":"a/b:1"}]}`, "x"},
		{"empty registry means built-ins", `{"inCluster":true,"adapterType":"pi_local","adapters":[]}`, "pi_local"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			cfg, norm, _, errs := Validate(json.RawMessage(tt.in), testBackends)
			is.Equal(errs, nil)
			is.Equal(cfg.AdapterType, tt.want)
			is.Equal(norm["adapterType"], tt.want)
		})
	}
}

func TestBackends(t *testing.T) {
	tests := []struct {
		name     string
		backend  string
		backends []string
		want     string
		errs     []string
		warn     bool
	}{
		{"default", "", testBackends, "sandbox", nil, false},
		{"job", "job", testBackends, "job", nil, false},
		{"legacy alias", "sandbox-cr", testBackends, "sandbox", nil, true},
		{"legacy name in the loaded list", "sandbox", []string{"sandbox-cr"}, "sandbox", nil, false},
		{"plugin backend", "kata-vm", []string{"sandbox", "job", "kata-vm"}, "kata-vm", nil, false},
		{"unknown", "kata-vm", testBackends, "kata-vm", []string{"/backend"}, false},
		{"no list skips the check", "anything", nil, "anything", nil, false},
		{"bad name", "Not A Name", testBackends, "sandbox", []string{"/backend"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			in := map[string]any{"inCluster": true, "egressMode": "cilium"}
			if tt.backend != "" {
				in["backend"] = tt.backend
			}
			cfg, norm, warns, errs := Validate(in, tt.backends)
			is.Equal(pointers(errs), tt.errs)
			is.Equal(cfg.Backend, tt.want)
			if tt.errs == nil {
				is.Equal(norm["backend"], tt.want)
			}
			is.Equal(len(warns) > 0, tt.warn)
		})
	}
}

func TestEgressWarnings(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // substrings, one per warning
	}{
		{"standard, no cidrs", `{"inCluster":true}`, []string{"public IPv4 egress on TCP 80 and 443"}},
		{"standard, cidrs", `{"inCluster":true,"egressAllowCidrs":["10.0.0.0/8"],"egressAllowFqdns":["pypi.org"]}`, []string{"api.anthropic.com, pypi.org", "reach only", "10.0.0.0/8"}},
		{"cilium", `{"inCluster":true,"egressMode":"cilium"}`, nil},
		{"standard, adapter with no hosts", `{"inCluster":true,"adapterType":"x","adapters":[{"adapterType":"x","runtimeImage":"a/b:1"}]}`, nil},
		{"open cidr", `{"inCluster":true,"egressMode":"cilium","egressAllowCidrs":["0.0.0.0/0"]}`, []string{"every destination"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			_, _, warns, errs := Validate(json.RawMessage(tt.in), testBackends)
			is.Equal(errs, nil)
			all := strings.Join(warns, "\n")
			for _, w := range tt.want {
				is.True(strings.Contains(all, w))
			}
			if tt.want == nil {
				is.Equal(warns, nil)
			}
		})
	}
}

func TestTypoAndLegacyWarnings(t *testing.T) {
	is := is.New(t)
	_, norm, warns, errs := Validate(json.RawMessage(`{"inCluster":true,"egressMode":"cilium","namespacePrefx":"x","EgressAllowCidrs":["1.2.3.4/32"],"runtimeImages":{},"timeoutMs":5,"somethingElse":1}`), testBackends)
	is.Equal(errs, nil)
	is.Equal(len(warns), 3)
	is.True(strings.Contains(warns[0], `"EgressAllowCidrs"`) && strings.Contains(warns[0], `did you mean "egressAllowCidrs"`))
	is.True(strings.Contains(warns[1], `"namespacePrefx"`) && strings.Contains(warns[1], `"namespacePrefix"`))
	is.True(strings.Contains(warns[2], `"runtimeImages"`) && strings.Contains(warns[2], "adapters[].runtimeImage"))
	_, kept := norm["somethingElse"]
	is.True(kept)
}

func TestNullAndBlankMeanUnset(t *testing.T) {
	is := is.New(t)
	cfg, norm, _, errs := Validate(json.RawMessage(`{"inCluster":true,"egressMode":null,"imageRegistry":"","companySlug":"  ","runtimeClassName":null,"kubeconfig":""}`), testBackends)
	is.Equal(errs, nil)
	is.Equal(cfg.EgressMode, "standard")
	for _, k := range []string{"imageRegistry", "companySlug", "runtimeClassName", "kubeconfig"} {
		_, ok := norm[k]
		is.True(!ok)
	}
	_, _, _, errs = Validate(json.RawMessage(`{"kubeconfig":"   "}`), testBackends)
	is.Equal(pointers(errs), []string{""})
}

func TestNotAnObject(t *testing.T) {
	for _, in := range []any{json.RawMessage(`[1]`), json.RawMessage(`"x"`), json.RawMessage(`{`), []byte(`7`)} {
		is := is.New(t)
		_, norm, _, errs := Validate(in, testBackends)
		is.Equal(len(errs), 1)
		is.Equal(errs[0].Pointer, "")
		is.Equal(norm, nil)
	}
	// nil behaves like {}: only the credentials error.
	is := is.New(t)
	_, _, _, errs := Validate(nil, testBackends)
	is.Equal(pointers(errs), []string{""})
}

func TestInputNotMutated(t *testing.T) {
	is := is.New(t)
	in := map[string]any{"inCluster": true, "egressAllowCidrs": []any{"2001:DB8::/32"}, "backend": "sandbox-cr"}
	_, norm, _, errs := Validate(in, testBackends)
	is.Equal(errs, nil)
	is.Equal(in["backend"], "sandbox-cr")
	is.Equal(in["egressAllowCidrs"].([]any)[0], "2001:DB8::/32")
	is.Equal(len(in), 3)
	is.Equal(norm["backend"], "sandbox")
}

// A kubeconfig document that cannot name a cluster is an error at
// validation; a one-line value is a secret reference the host resolves
// later, so it is not checked.
func TestKubeconfigMustBeUsable(t *testing.T) {
	for _, c := range []struct{ kubeconfig, want string }{
		{"apiVersion: v1\nkind: Config\n…", "is not a kubeconfig YAML (it does not parse)"},
		{"apiVersion: v1\nkind: Config\ncurrent-context: x\n", `current-context "x" names no context`},
		{"apiVersion: v1\nkind: Config\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n", `names cluster "c", which is not in clusters[]`},
		{"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {insecure-skip-tls-verify: true}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n", `cluster "c" has no server`},
	} {
		_, _, _, errs := Validate(map[string]any{"kubeconfig": c.kubeconfig}, testBackends)
		if len(errs) != 1 || errs[0].Pointer != "/kubeconfig" || !strings.Contains(errs[0].Message, c.want) {
			t.Errorf("kubeconfig %q: errors %v, want one on /kubeconfig containing %q", c.kubeconfig, errs, c.want)
		}
	}
	_, _, _, errs := Validate(map[string]any{"kubeconfig": "5f0c2a7e-1b7d-4c8e-9a51-3c2d1e0f9a88"}, testBackends)
	is.New(t).Equal(errs, nil) // a secret id
}

func TestParse(t *testing.T) {
	is := is.New(t)
	cfg, err := Parse(map[string]any{"inCluster": true}, testBackends)
	is.NoErr(err)
	is.Equal(cfg.Backend, "sandbox")
	_, err = Parse(fixture(t, "invalid-many.json"), testBackends)
	var fe FieldErrors
	is.True(err != nil)
	is.True(errorsAs(err, &fe))
	is.Equal(len(fe), 9) // the kubeconfig in it has no current-context
	is.Equal(len(fe.Strings()), 9)
	is.True(strings.Contains(err.Error(), "/egressAllowCidrs/2: "))
}

func errorsAs(err error, fe *FieldErrors) bool {
	x, ok := err.(FieldErrors)
	*fe = x
	return ok
}

// The kubeconfig value must never reach an error or a warning, whatever
// else is wrong with the config.
func TestKubeconfigNeverInMessages(t *testing.T) {
	const sentinel = "SENTINEL-KUBECONFIG-7f3a9c"
	long := "apiVersion: v1\nusers:\n- name: u\n  user:\n    token: " + sentinel + "\n"
	bad := map[string]any{
		"namespacePrefix": "Bad_", "egressAllowCidrs": []any{"10.0.0.0/33"}, "backend": "nope",
		"imageRegistry": "https://x", "adapterType": "nope", "egressMode": "nope",
		"paperclipServerPodLabels": map[string]any{"k": "bad value"}, "defaultResources": map[string]any{"requests": map[string]any{"cpu": "9", "memory": "x"}},
	}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		maps.Copy(m, bad)
		maps.Copy(m, extra)
		return m
	}
	tests := []struct {
		name string
		in   map[string]any
	}{
		{"plain kubeconfig", with(map[string]any{"kubeconfig": sentinel})},
		{"yaml kubeconfig", with(map[string]any{"kubeconfig": long})},
		{"in-cluster too", with(map[string]any{"kubeconfig": sentinel, "inCluster": true})},
		{"inCluster wrong type", with(map[string]any{"kubeconfig": sentinel, "inCluster": sentinel})},
		{"pasted into other fields", with(map[string]any{"kubeconfig": sentinel, "companySlug": sentinel, "runtimeClassName": sentinel, "workspacePath": sentinel, "egressAllowFqdns": []any{sentinel}, "imagePullSecrets": []any{sentinel}})},
		{"yaml pasted into other fields", with(map[string]any{"kubeconfig": long, "companySlug": long, "namespacePrefix": long, "egressAllowCidrs": []any{long}})},
		{"kubeconfig binding object", with(map[string]any{"kubeconfig": map[string]any{"type": "secret_ref", "secretId": sentinel}})},
		{"kubeconfig as array", with(map[string]any{"kubeconfig": []any{sentinel}})},
		{"kubeconfig under a typo key", with(map[string]any{"kubeConfig": sentinel})},
		{"valid config", map[string]any{"kubeconfig": sentinel, "inCluster": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, warns, errs := Validate(tt.in, testBackends)
			var all []string
			all = append(all, warns...)
			for _, e := range errs {
				all = append(all, e.Error(), e.Pointer, e.Message)
			}
			b, _ := json.Marshal(errs)
			all = append(all, string(b), fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg))
			cb, _ := json.Marshal(cfg)
			all = append(all, string(cb))
			for _, s := range all {
				if strings.Contains(s, sentinel) {
					t.Fatalf("kubeconfig leaked: %s", s)
				}
			}
			if len(errs) == 0 && tt.name != "valid config" {
				t.Fatal("expected errors")
			}
		})
	}
	// The typed config still carries it for the client builder.
	is := is.New(t)
	cfg, _, _, _ := Validate(map[string]any{"kubeconfig": sentinel}, testBackends)
	is.Equal(cfg.Kubeconfig.Reveal(), sentinel)
}

func TestErrorsSortedAndUnique(t *testing.T) {
	is := is.New(t)
	_, _, _, errs := Validate(json.RawMessage(`{"inCluster":true,"egressAllowCidrs":["a","b","c","d","e","f","g","h","i","j","k"]}`), testBackends)
	ps := pointers(errs)
	is.Equal(len(ps), 11)
	is.Equal(ps[2], "/egressAllowCidrs/2")
	is.Equal(ps[10], "/egressAllowCidrs/10")
	is.True(sort.SliceIsSorted(ps, func(i, j int) bool { return pointerLess(ps[i], ps[j]) }))
}

func TestNamespaceLength(t *testing.T) {
	tests := []struct {
		prefix, slug string
		ok           bool
	}{
		{"paperclip-", "acme", true},
		{strings.Repeat("a", 32), strings.Repeat("b", 31), true},  // 63
		{strings.Repeat("a", 32), strings.Repeat("b", 32), false}, // 64
		{"paperclip-", strings.Repeat("b", 53), true},             // 63
		{"p", "-x", true}, // "p-x"
	}
	for _, tt := range tests {
		t.Run(tt.prefix+"+"+tt.slug, func(t *testing.T) {
			is := is.New(t)
			_, _, _, errs := Validate(map[string]any{"inCluster": true, "namespacePrefix": tt.prefix, "companySlug": tt.slug}, testBackends)
			if tt.slug == "-x" { // the slug pattern rejects a leading '-'
				is.Equal(pointers(errs), []string{"/companySlug"})
				return
			}
			is.Equal(len(errs) == 0, tt.ok)
			if !tt.ok {
				is.Equal(pointers(errs), []string{"/companySlug"})
				is.True(strings.Contains(errs[0].Message, "63"))
			}
		})
	}
}

func TestIntegerForms(t *testing.T) {
	is := is.New(t)
	cfg, norm, _, errs := Validate(json.RawMessage(`{"inCluster":true,"execMaxOutputBytes":1e8,"paperclipServerPort":3100.0}`), testBackends)
	is.Equal(errs, nil)
	is.Equal(cfg.ExecMaxOutputBytes, int64(100000000))
	is.Equal(cfg.PaperclipServerPort, 3100)
	b, _ := json.Marshal(norm["execMaxOutputBytes"])
	is.Equal(string(b), "100000000")
}

func TestWorkspacePathCleaned(t *testing.T) {
	is := is.New(t)
	cfg, _, _, errs := Validate(map[string]any{"inCluster": true, "workspacePath": "/srv//work/"}, testBackends)
	is.Equal(errs, nil)
	is.Equal(cfg.WorkspacePath, "/srv/work")
	_, _, _, errs = Validate(map[string]any{"inCluster": true, "workspacePath": "/"}, testBackends)
	is.Equal(pointers(errs), []string{"/workspacePath"})
}

func TestResourcesPartial(t *testing.T) {
	is := is.New(t)
	cfg, norm, _, errs := Validate(map[string]any{"inCluster": true, "defaultResources": map[string]any{"limits": map[string]any{"memory": "6Gi"}}}, testBackends)
	is.Equal(errs, nil)
	is.Equal(cfg.DefaultResources, Resources{
		Requests: ResourceList{CPU: "250m", Memory: "512Mi"},
		Limits:   ResourceList{CPU: "2", Memory: "6Gi"},
	})
	is.True(jsonEqual(t, norm["defaultResources"], cfg.DefaultResources))

	_, _, _, errs = Validate(map[string]any{"inCluster": true, "defaultResources": map[string]any{"limits": map[string]any{"cpu": "100m"}}}, testBackends)
	is.Equal(pointers(errs), []string{"/defaultResources/requests/cpu"})
	is.True(strings.Contains(errs[0].Message, "(the default)"))
}

func TestInClusterWithKubeconfigWarns(t *testing.T) {
	is := is.New(t)
	_, _, warns, errs := Validate(map[string]any{"inCluster": true, "kubeconfig": "some-secret-id", "egressMode": "cilium"}, testBackends)
	is.Equal(errs, nil)
	is.Equal(warns, []string{"inCluster is true, so kubeconfig is ignored"})
}

func TestMessagesHaveNoV5Escapes(t *testing.T) {
	is := is.New(t)
	_, _, _, errs := Validate(json.RawMessage(`{"inCluster":true,"nodeSelector":{"a b%":"x"}}`), testBackends)
	is.Equal(pointers(errs), []string{"/nodeSelector/a b%"})
	is.True(regexp.MustCompile(`key "a b%"`).MatchString(errs[0].Message))
}

func TestValidateConcurrent(t *testing.T) {
	raw := fixture(t, "invalid-many.json")
	_, _, _, want := Validate(raw, testBackends)
	done := make(chan []FieldError)
	for range 8 {
		go func() {
			_, _, _, errs := Validate(raw, testBackends)
			done <- errs
		}()
	}
	for range 8 {
		is.New(t).Equal(<-done, want)
	}
}
