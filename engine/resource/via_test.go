package resource_test

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// Load checks what the schema cannot about pod discovery through other
// objects and pod specs: a via names a file with an api and pods rules and
// makes no cycle; a backend without podSpecPath finds its pods only
// through via (else the admission policy would check no pod spec of it);
// runEnv names a run file.
func TestLoadChecksViaAndPodSpecs(t *testing.T) {
	const hdr = "apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\n"
	backend := func(name, pods string, extra string) string {
		return hdr + "name: " + name + `
description: x
scope: backend
api: {group: example.com, kind: ` + strings.ToUpper(name[:1]) + name[1:] + `, resource: ` + name + `s, versions: [v1]}
backend: {mode: exec, deadline: time, deadlinePath: spec.until` + extra + `}
template: {metadata: {name: "${run.name}"}}
health: {rules: [{state: Ready}]}
pods: ` + pods + "\n"
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"unknown file", map[string]string{"a.yaml": backend("alpha", "{container: c, find: [{via: {resource: nothere, nameFrom: status.x}}]}", "")},
			`a.yaml: /pods/find/0/via/resource: names "nothere", which is not a file with an api and pods rules in the catalog`},
		{"a file without pods rules", map[string]string{"a.yaml": backend("alpha", "{container: c, find: [{via: {resource: secret, nameFrom: status.x}}]}", "")},
			`a.yaml: /pods/find/0/via/resource: names "secret", which is not a file with an api and pods rules in the catalog`},
		{"cycle", map[string]string{
			"a.yaml": backend("alpha", "{container: c, find: [{via: {resource: beta, nameFrom: status.x}}]}", ""),
			"b.yaml": backend("beta", "{container: c, find: [{via: {resource: alpha, nameFrom: status.x}}]}", ""),
		}, `a.yaml: /pods/find/0/via/resource: names "alpha", which makes a cycle: alpha -> beta -> alpha`},
		{"no pod spec, own pods", map[string]string{"a.yaml": backend("alpha", "{container: c, find: [{name: x}]}", "")},
			`a.yaml: /pods/find/0: finds pods of the workload itself, but backend.podSpecPath is not set`},
		{"runEnv not a run file", map[string]string{"a.yaml": backend("alpha", "{container: c, find: [{via: {resource: sandbox, nameFrom: status.x}}]}", ", runEnv: {resource: sandbox, path: data}")},
			`a.yaml: /backend/runEnv/resource: names "sandbox", which is not a run file (scope: run) in the catalog`},
		{"runEnv path not plain", map[string]string{"a.yaml": backend("alpha", "{container: c, find: [{via: {resource: sandbox, nameFrom: status.x}}]}", ", runEnv: {resource: secret, path: 'data.#'}")},
			`a.yaml: /backend/runEnv/path: path "data.#" uses '#'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			fs := fstest.MapFS{}
			for n, body := range tc.files {
				fs[n] = &fstest.MapFile{Data: []byte(body)}
			}
			_, err := resource.Load(resources.FS, ".", fs)
			is.True(err != nil)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("the error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}

// The shipped sandboxclaim backend reaches its pod through the Sandbox
// file, and the catalog grants get on it (and probe checks its API).
func TestSandboxClaimNeedsTheSandboxAPI(t *testing.T) {
	is := is.New(t)
	c := testutil.Catalog(t)
	claim, ok := c.Get("sandboxclaim")
	is.True(ok)
	via := c.ViaResources(claim)
	is.Equal(len(via), 1)
	is.Equal(via[0].Name, "sandbox")
	is.Equal(claim.PodSpec(), "") // the claim carries no pod spec
	tpl, _ := c.Get("sandboxtemplate")
	is.Equal(tpl.PodSpec(), "spec.podTemplate.spec") // its template does
	var claims, templates, pools []string
	for _, p := range c.Permissions() {
		switch p.Group + "/" + p.Resource {
		case "extensions.agents.x-k8s.io/sandboxclaims":
			claims = p.Verbs
		case "extensions.agents.x-k8s.io/sandboxtemplates":
			templates = p.Verbs
		case "extensions.agents.x-k8s.io/sandboxwarmpools":
			pools = p.Verbs
		}
	}
	is.Equal(claims, []string{"create", "delete", "get", "list", "patch", "watch"})
	is.Equal(templates, []string{"create", "delete", "get", "patch"}) // applied, pruned when the backend changes
	is.Equal(pools, []string{"create", "delete", "get", "patch"})
}
