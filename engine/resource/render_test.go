package resource_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/matryer/is"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/valuestest"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// TestGoldenManifests renders every tenant, run and backend file under each
// representative config, from the values plugin.BuildValues builds out of
// testdata/values, and compares with testdata/golden (go test -update
// rewrites them; review the diff).
func TestGoldenManifests(t *testing.T) {
	c := testutil.Catalog(t)
	for _, name := range []string{"standard-job", "cilium-sandbox", "standard-cidrs-sandbox", "standard-sandboxclaim"} {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			vc := valuestest.LoadShipped(t, name)
			var specs []*resource.Resource
			specs = append(specs, c.Used(resource.UseTenant)...)
			specs = append(specs, c.Used(resource.UseRun)...)
			b, ok := c.Get(vc.Backend)
			is.True(ok)
			specs = append(specs, b)
			for _, s := range specs {
				obj, wanted, err := s.Render(vc.Values)
				is.NoErr(err)
				golden := filepath.Join("..", "..", "testdata", "golden", name, s.Name+".yaml")
				var got []byte
				if wanted {
					got, err = yaml.Marshal(obj)
					is.NoErr(err)
				} else {
					got = []byte("# not wanted under this config\n")
				}
				if *update {
					is.NoErr(os.MkdirAll(filepath.Dir(golden), 0o755))
					is.NoErr(os.WriteFile(golden, got, 0o644))
					continue
				}
				want, err := os.ReadFile(golden)
				is.NoErr(err)
				if string(want) != string(got) {
					t.Errorf("%s differs from %s:\n%s", s.File, golden, got)
				}
			}
		})
	}
}

// The template keeps types: lists stay lists, numbers stay numbers, unset
// optional fields disappear, and the public fallback follows the values.
func TestRenderTypesAndOptionalFields(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	vc := valuestest.LoadShipped(t, "standard-job")
	job, _ := c.Get("job")
	obj, wanted, err := job.Render(vc.Values)
	is.NoErr(err)
	is.True(wanted)
	spec := obj["spec"].(map[string]any)
	is.Equal(spec["activeDeadlineSeconds"], int64(3600))
	is.Equal(spec["ttlSecondsAfterFinished"], int64(900))
	pod := spec["template"].(map[string]any)["spec"].(map[string]any)
	_, hasRC := pod["runtimeClassName"]
	is.True(!hasRC) // unset optional field is gone
	_, hasIPS := pod["imagePullSecrets"]
	is.True(!hasIPS) // empty list is gone
	cmd := pod["containers"].([]any)[0].(map[string]any)["command"].([]any)
	is.Equal(len(cmd), 3) // a list stays a list
	labels := spec["template"].(map[string]any)["metadata"].(map[string]any)["labels"].(map[string]any)
	is.Equal(labels["paperclip.io/role"], "agent")
	is.Equal(labels["paperclip.io/run-id"], "2bdca326-e3db-453a-aa59-5f0be25df1f6")

	egress, _ := c.Get("networkpolicy-egress")
	np, wanted, err := egress.Render(vc.Values)
	is.NoErr(err)
	is.True(wanted)
	rules := np["spec"].(map[string]any)["egress"].([]any)
	is.Equal(len(rules), 3) // DNS, callback, public fallback (FQDNs, no CIDRs)
	is.Equal(rules[1].(map[string]any)["ports"].([]any)[0].(map[string]any)["port"], int64(3100))

	cilium, _ := c.Get("ciliumnetworkpolicy-egress")
	_, wanted, err = cilium.Render(vc.Values)
	is.NoErr(err)
	is.True(!wanted) // standard mode: the CNP is not wanted

	vc = valuestest.LoadShipped(t, "cilium-sandbox")
	cnp, wanted, err := cilium.Render(vc.Values)
	is.NoErr(err)
	is.True(wanted)
	crules := cnp["spec"].(map[string]any)["egress"].([]any)
	is.Equal(len(crules), 4) // DNS, FQDNs, callback, CIDRs
	port := crules[2].(map[string]any)["toPorts"].([]any)[0].(map[string]any)["ports"].([]any)[0].(map[string]any)["port"]
	is.Equal(port, "3100") // |string keeps Cilium's string port
	fqdns := crules[1].(map[string]any)["toFQDNs"].([]any)
	is.Equal(len(fqdns), 2)
}

func TestRenderMissingValueNamesFileAndPath(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	vc := valuestest.LoadShipped(t, "standard-job")
	run := vc.Values["run"].(map[string]any)
	delete(run, "image")
	job, _ := c.Get("job")
	_, _, err := job.Render(vc.Values)
	is.True(err != nil)
	msg := err.Error()
	is.True(strings.Contains(msg, "agent-pod.yaml")) // the fragment's file
	is.True(strings.Contains(msg, "/template/spec/containers/0/image"))
	is.True(strings.Contains(msg, "run.image is not set"))
}

func TestMalformedFileNamesFilePathAndProblem(t *testing.T) {
	is := is.New(t)
	_, err := resource.Parse("resources/broken.yaml", []byte(`
apiVersion: paperclip-k8s.io/v1alpha1
kind: Resource
name: broken
description: a backend with a typo in a rule
scope: backend
api: {group: batch, kind: Job, resource: jobs, versions: [v1]}
backend: {mode: exec, deadline: seconds}
template: {metadata: {name: x}}
pods: {container: agent, find: [{name: x}]}
health:
  rules:
    - state: Ready
    - state: Redy
`))
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "resources/broken.yaml: /health/rules/1/state:"))

	_, err = resource.Parse("resources/nover.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\nname: x\ndescription: d\nscope: tenant\napi: {group: g, kind: K, resource: ks, versions: []}\ntemplate: {}\n"))
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "resources/nover.yaml: /api/versions:"))

	_, err = resource.Parse("resources/bad.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\nname: [unclosed\n"))
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "resources/bad.yaml: not valid YAML"))

	// The file format is versioned: another version or kind is refused
	// before the schema, with what to write instead.
	_, err = resource.Parse("resources/old.yaml", []byte("name: x\ndescription: d\nscope: tenant\n"))
	is.True(err != nil)
	is.Equal(err.Error(), `resources/old.yaml: /apiVersion: is missing; start the file with "apiVersion: paperclip-k8s.io/v1alpha1" and "kind: Resource"`)
	_, err = resource.Parse("resources/new.yaml", []byte("apiVersion: paperclip-k8s.io/v2\nkind: Resource\nname: x\n"))
	is.True(err != nil)
	is.True(strings.HasPrefix(err.Error(), "resources/new.yaml: /apiVersion: is paperclip-k8s.io/v2, a version this provider does not read; it reads paperclip-k8s.io/v1alpha1"))
	_, err = resource.Parse("resources/kind.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Pod\nname: x\n"))
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "resources/kind.yaml: /kind: is Pod; a data file of paperclip-k8s.io/v1alpha1 has kind Resource"))
}

func TestPermissionsCoverEveryFileAndSubresource(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	perms := map[string][]string{}
	for _, p := range c.Permissions() {
		perms[p.Group+"/"+p.Resource] = p.Verbs
	}
	is.Equal(perms["/pods/exec"], []string{"create", "get"})
	is.Equal(perms["/pods/log"], []string{"get"})
	is.Equal(perms["/pods"], []string{"get", "list", "watch"})
	is.Equal(perms["agents.x-k8s.io/sandboxes"], []string{"create", "delete", "get", "list", "patch", "watch"}) // patch: SetDeadline
	is.Equal(perms["batch/jobs"], []string{"create", "delete", "get", "list", "watch"})
	is.Equal(perms["agents.x-k8s.io/sandboxes/finalizers"], []string{"update"})
	is.Equal(perms["networking.k8s.io/networkpolicies"], []string{"create", "delete", "get", "patch"}) // tenant ∪ run
	is.Equal(perms["/namespaces"], []string{"create", "get", "patch"})                                 // read to check the claim; never deleted
	is.Equal(perms["/secrets"], []string{"create", "delete", "get"})                                   // read only to check the owner (destroy)
	for _, s := range c.All() {
		if s.API != nil {
			_, ok := perms[s.API.Group+"/"+s.API.Resource]
			is.True(ok) // every file's resource is covered
		}
	}
}

// Deadline reads the absolute deadline the template put at deadlinePath.
func TestDeadlineIsReadFromTheWorkload(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	vc := valuestest.LoadShipped(t, "cilium-sandbox")
	sb, _ := c.Get("sandbox")
	obj, _, err := sb.Render(vc.Values)
	is.NoErr(err)
	d, ok := sb.Deadline(&unstructured.Unstructured{Object: obj})
	is.True(ok)
	is.Equal(d.UTC().Format(time.RFC3339), "2026-11-28T05:00:00Z") // run.deadlineTime
	job, _ := c.Get("job")
	jobObj, _, err := job.Render(vc.Values)
	is.NoErr(err)
	_, ok = job.Deadline(&unstructured.Unstructured{Object: jobObj})
	is.True(!ok) // a seconds deadline has no absolute time
}

// Load checks every path into the values against schemas/values.schema.json
// and names the file and the place: a typo, a value the file's scope does
// not have, a path that is not plain, a list that is not one.
func TestLoadChecksValuePaths(t *testing.T) {
	is := is.New(t)
	const hdr = "apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\n"
	bad := hdr + `name: bad
description: every kind of wrong path
scope: tenant
when: [{path: config.egresMode, equals: standard}]
api: {group: "", kind: ConfigMap, resource: configmaps, versions: [v1]}
template:
  metadata:
    name: ${run.name}
    labels: ${tenantLabels}
  data:
    a: ${config.workspacePath.x}
    b: ${config.paperclipServerPort|int}
    c: {$if: [{path: 'egress.fqdns.#'}], then: x}
    d: {$each: namespace, as: ns, do: "${ns}"}
    e: {$each: egress.fqdns, as: f, do: "${f.host}"}
    f: ${nothere?}
    g: "labels: ${tenantLabels}"
`
	deadline := hdr + `name: deadline
description: a backend whose deadlinePath is a query
scope: backend
api: {group: "", kind: Pod, resource: pods, versions: [v1]}
backend: {mode: exec, deadline: time, deadlinePath: 'spec.#(x)', podSpecPath: spec}
template: {metadata: {name: "${run.name}"}}
pods: {container: c, find: [{self: true}]}
health: {rules: [{$use: pod}]}
`
	_, err := resource.Load(resources.FS, ".", fstest.MapFS{"deadline.yaml": {Data: []byte(deadline)}})
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), `deadline.yaml: /backend/deadlinePath: path "spec.#(x)" uses '#'`))

	used := hdr + `name: usesfrag
description: a tenant file that uses the agent pod fragment (run values only)
scope: tenant
api: {group: "", kind: ConfigMap, resource: configmaps, versions: [v1]}
template:
  metadata: {name: x}
  data:
    $use: agent-pod
    with: {restartPolicy: Never, command: [x]}
`
	_, err = resource.Load(resources.FS, ".", fstest.MapFS{"bad.yaml": {Data: []byte(bad)}, "usesfrag.yaml": {Data: []byte(used)}})
	is.True(err != nil)
	msg := err.Error()
	for _, want := range []string{
		`bad.yaml: /when/0/path: config.egresMode: config has no "egresMode" (it has adapterType, adapters,`,
		`bad.yaml: /template/metadata/name: run.name: run is set for run and backend files only, and this is read by a tenant file`,
		`bad.yaml: /template/data/a: config.workspacePath.x: config.workspacePath is string and has no "x"`,
		`bad.yaml: /template/data/b: ${config.paperclipServerPort|int} converts with "int"; the one conversion is string`,
		`bad.yaml: /template/data/c/$if/0/path: path "egress.fqdns.#" uses '#', which only paths into Kubernetes objects may use`,
		`bad.yaml: /template/data/d/$each: namespace is string, not a list`,
		`bad.yaml: /template/data/e/do: f.host: f is string and has no "host"`,
		"bad.yaml: /template/data/g: tenantLabels is object and cannot be part of a string; make ${tenantLabels} the whole value",
		`bad.yaml: /template/data/f: nothere: the values have no "nothere" (they are companyId, config, egress, grant, namespace, operator, provider, run, tenantLabels, warmPool;`,
		`agent-pod.yaml: /template/spec/containers/0/image: run.image: run is set for run and backend files only, and this is read by a tenant file (schemas/values.schema.json) (in the fragment as usesfrag.yaml uses it)`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q:\n%s", want, msg)
		}
	}
}

// The warm pool's pod (resources/sandboxtemplate.yaml, made before any run)
// is the agent pod of resources/agent-pod.yaml but for what belongs to a
// run: its labels and the run Secret as environment. Rendered under the
// same config, the two pod specs differ in nothing else, so a change to
// the hardened pod that misses the template fails here.
func TestWarmPoolPodIsTheAgentPod(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	vc := valuestest.LoadShipped(t, "standard-sandboxclaim")
	podSpec := func(file string) map[string]any {
		s, ok := c.Get(file)
		is.True(ok)
		obj, wanted, err := s.Render(vc.Values)
		is.NoErr(err)
		is.True(wanted)
		return obj["spec"].(map[string]any)["podTemplate"].(map[string]any)["spec"].(map[string]any)
	}
	agent, warm := podSpec("sandbox"), podSpec("sandboxtemplate")
	container := agent["containers"].([]any)[0].(map[string]any)
	is.True(container["envFrom"] != nil) // the run Secret: a run's pod only
	delete(container, "envFrom")
	a, err := json.Marshal(agent)
	is.NoErr(err)
	w, err := json.Marshal(warm)
	is.NoErr(err)
	is.Equal(string(w), string(a))
}
