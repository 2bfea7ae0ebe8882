package plugin_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

func valuesSchema(t *testing.T) (map[string]any, *jsonschema.Schema) {
	t.Helper()
	raw, err := schemas.FS.ReadFile("values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	if err := c.AddResource("values.schema.json", bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	return doc, c.MustCompile("values.schema.json")
}

// The Values type and schemas/values.schema.json declare the same tree:
// every field is in the schema and every closed object of the schema is a
// struct with exactly those fields.
func TestValuesTypeIsItsSchema(t *testing.T) {
	doc, _ := valuesSchema(t)
	defs, _ := doc["$defs"].(map[string]any)
	var walk func(at string, typ reflect.Type, s map[string]any)
	walk = func(at string, typ reflect.Type, s map[string]any) {
		if ref, ok := s["$ref"].(string); ok {
			s, _ = defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
		}
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch typ.Kind() {
		case reflect.Struct:
			props, _ := s["properties"].(map[string]any)
			fields := jsonFields(typ)
			var names []string
			for n := range fields {
				names = append(names, n)
			}
			var declared []string
			for n := range props {
				declared = append(declared, n)
			}
			sort.Strings(names)
			sort.Strings(declared)
			if !reflect.DeepEqual(names, declared) {
				t.Errorf("%s: the Go type has %v, the schema %v", at, names, declared)
			}
			if s["additionalProperties"] != false {
				t.Errorf("%s: the schema must close the object (additionalProperties: false)", at)
			}
			for n, f := range fields {
				if p, ok := props[n].(map[string]any); ok {
					walk(at+"."+n, f, p)
				}
			}
		case reflect.Slice:
			if items, ok := s["items"].(map[string]any); ok {
				if _, open := items["properties"]; open || typ.Elem().Kind() != reflect.Struct {
					walk(at+"[]", typ.Elem(), items)
				}
			}
		case reflect.Map:
			if ap, ok := s["additionalProperties"].(map[string]any); ok {
				walk(at+"{}", typ.Elem(), ap)
			}
		}
	}
	walk("values", reflect.TypeOf(plugin.Values{}), doc)
}

// jsonFields are a struct's JSON fields (embedded structs flattened; an
// outer field hides an embedded one of the same name; *struct{} fields only
// hide).
func jsonFields(typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	hidden := map[string]bool{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Anonymous {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct && f.Type.Elem().NumField() == 0 {
			hidden[name] = true
			continue
		}
		out[name] = f.Type
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.Anonymous {
			continue
		}
		for n, t := range jsonFields(f.Type) {
			if _, ok := out[n]; !ok && !hidden[n] {
				out[n] = t
			}
		}
	}
	return out
}

// The values built from every input file in testdata/values (what the
// golden manifests render from) are valid under the schema, and never hold
// the kubeconfig.
func TestBuiltValuesMeetTheirSchema(t *testing.T) {
	is := is.New(t)
	_, schema := valuesSchema(t)
	c, err := resource.Load(resources.FS, ".")
	is.NoErr(err)
	files, err := filepath.Glob(filepath.Join(valuestest.Dir(), "*.yaml"))
	is.NoErr(err)
	is.True(len(files) >= 3)
	for _, f := range files {
		vc := valuestest.Load(t, c, strings.TrimSuffix(filepath.Base(f), ".yaml"))
		if err := schema.Validate(any(vc.Values)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	cfg, err := policy.Parse(map[string]any{"inCluster": true, "backend": "job"}, nil)
	is.NoErr(err)
	cfg.Kubeconfig = "apiVersion: v1\nkind: Config\n"
	v, _, err := plugin.BuildValues(cfg, plugin.ValuesInput{CompanyID: "c", Namespace: "ns"})
	is.NoErr(err)
	m := v.Map()
	_, has := m["config"].(map[string]any)["kubeconfig"]
	is.True(!has) // the kubeconfig is never a value
	b, _ := json.Marshal(m)
	is.True(!bytes.Contains(b, []byte("kind: Config")))
	is.NoErr(schema.Validate(any(m)))
}

// BuildValues is the one builder: a run's values, its facts, the
// provider's identity as the tenant RoleBinding reads it, and its errors.
func TestBuildValues(t *testing.T) {
	is := is.New(t)
	cfg, err := policy.Parse(map[string]any{"inCluster": true, "backend": "sandbox", "sandboxLifetimeSec": 600}, nil)
	is.NoErr(err)
	now := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	env := map[string]string{}
	in := plugin.ValuesInput{CompanyID: "acme", Namespace: "paperclip-acme", Getenv: func(k string) string { return env[k] }, Run: &plugin.RunInput{
		RunID: "run-1", AgentID: "agent-1", EnvironmentID: "env-1", Mode: resource.ModeExec, Now: now, Name: "pc-x", Token: "tok",
		ExecutionWorkspaceSettings: map[string]any{"networkEgress": map[string]any{"allowCidrs": []any{"198.51.100.7", "not-a-cidr"}}}}}
	v, facts, err := plugin.BuildValues(cfg, in)
	is.NoErr(err)
	is.Equal(facts.Deadline, now.Add(600*time.Second)) // exec: sandboxLifetimeSec
	is.Equal(v.Run.DeadlineSeconds, int64(600))
	is.Equal(v.Run.DeadlineTime, "2026-11-27T05:10:00Z")
	is.Equal(v.Run.SecretName, "pc-x-env")
	is.Equal(v.Run.EgressPolicyName, "pc-x-egress")
	is.Equal(v.Run.Env["BOOTSTRAP_TOKEN"], "tok")
	is.Equal(v.Grant.CIDRs, []string{"198.51.100.7/32"})
	is.True(v.Grant.Any)
	is.Equal(len(facts.Warnings), 1) // the CIDR that is not one
	is.Equal(v.Provider, (*plugin.ProviderValues)(nil))

	id := plugin.ParseUsername("system:serviceaccount:paperclip:prov")
	in.Identity = &id
	v, _, err = plugin.BuildValues(cfg, in)
	is.NoErr(err)
	is.Equal(v.Map()["provider"], id.Values()) // the same as addProviderIdentity sets

	env["PAPERCLIP_K8S_POD_ANNOTATIONS"] = `{"a": "b"}`
	v, _, err = plugin.BuildValues(cfg, in)
	is.NoErr(err)
	is.Equal(v.Operator.PodAnnotations, map[string]string{"a": "b"})
	env["PAPERCLIP_K8S_POD_ANNOTATIONS"] = `[1]`
	_, _, err = plugin.BuildValues(cfg, in)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "PAPERCLIP_K8S_POD_ANNOTATIONS is not a JSON object of strings"))
	delete(env, "PAPERCLIP_K8S_POD_ANNOTATIONS")

	// Validation refuses this too; the builder does not rely on it.
	bad := cfg
	bad.AdapterType = "codex_local"
	bad.Adapters = []policy.AdapterEntry{{AdapterType: "codex_local", RuntimeImage: "busybox:1", DefaultEnv: map[string]string{"BOOTSTRAP_TOKEN": "mine"}}}
	_, _, err = plugin.BuildValues(bad, in)
	is.True(err != nil)
	is.Equal(err.Error(), `adapter "codex_local" sets BOOTSTRAP_TOKEN in defaultEnv or envKeys; that name is reserved for the provider`)
}
