package plugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matryer/is"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

func TestRBACSplitsClusterAndTenant(t *testing.T) {
	is := is.New(t)
	p, err := New(nil)
	is.NoErr(err)
	docs, err := p.RBAC("ops", "paperclip")
	is.NoErr(err)
	is.Equal(len(docs), 7)
	var kinds []string
	for _, d := range docs {
		kinds = append(kinds, d["kind"].(string))
	}
	is.Equal(kinds, []string{"ClusterRole", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "PriorityLevelConfiguration", "FlowSchema"})
	fs := docs[6]["spec"].(map[string]any)
	subject := fs["rules"].([]any)[0].(map[string]any)["subjects"].([]any)[0].(map[string]any)
	is.Equal(subject["serviceAccount"], map[string]any{"namespace": "ops", "name": "paperclip"}) // only the provider's requests
	cluster := docs[0]["rules"].([]Rule)
	// Cluster-wide: the namespaces, the provider's own RoleBinding by name,
	// bind on the tenant role by name, the self reviews. Nothing else.
	var got []string
	for _, r := range cluster {
		verbs := strings.Join(r.Verbs, ",")
		if r.Resources[0] == "namespaces" {
			is.True(strings.Contains(verbs, "create") && strings.Contains(verbs, "patch")) // what the tenant apply needs
			is.True(!strings.Contains(verbs, "delete"))
			verbs = "…"
		}
		got = append(got, strings.Join(r.APIGroups, ",")+"/"+strings.Join(r.Resources, ",")+" "+verbs+" "+strings.Join(r.ResourceNames, ","))
	}
	is.Equal(got, []string{
		"/namespaces … ",
		"rbac.authorization.k8s.io/rolebindings create,get,patch paperclip-k8s-provider",
		"rbac.authorization.k8s.io/clusterroles bind paperclip-k8s-tenant",
		"authorization.k8s.io/selfsubjectaccessreviews create ",
		"authentication.k8s.io/selfsubjectreviews create ",
	})
	// The tenant role: every namespaced permission, nothing cluster-scoped.
	tenant := map[string]string{}
	for _, r := range docs[1]["rules"].([]Rule) {
		is.Equal(len(r.ResourceNames), 0)
		tenant[r.APIGroups[0]+"/"+r.Resources[0]] = strings.Join(r.Verbs, ",")
	}
	is.Equal(tenant["/pods/exec"], "create,get")
	is.Equal(tenant["/pods/log"], "get")
	is.Equal(tenant["batch/jobs"], "create,delete,get,list,watch")
	_, ok := tenant["/namespaces"]
	is.True(!ok)
	is.Equal(docs[1]["metadata"].(map[string]any)["name"], TenantClusterRoleName)

	// The provider's RoleBinding names the tenant ClusterRole this prints.
	grant := p.Catalog.Grants()[0]
	is.Equal(grant.Template["roleRef"].(map[string]any)["name"], TenantClusterRoleName)
	// And the agent pod runs as the ServiceAccount the policy requires.
	pod, _ := p.Catalog.Get("agent-pod")
	is.Equal(pod.Template["spec"].(map[string]any)["serviceAccountName"], TenantServiceAccount)
}

// The policy's workload rules come from each backend's podSpecPath: a
// backend that exists only in testdata (a bare Pod, pod spec at spec) gets
// them with no Go change.
func TestAdmissionPolicyFollowsTheBackendFiles(t *testing.T) {
	is := is.New(t)
	c, err := resource.Load(resources.FS, ".", os.DirFS(filepath.Join("..", "testdata", "backends")))
	is.NoErr(err)
	p := &Provider{Catalog: c}
	vap, err := p.AdmissionPolicy("ops", "paperclip")
	is.NoErr(err)
	spec := vap["spec"].(map[string]any)
	is.Equal(spec["matchConditions"].([]any)[0].(map[string]any)["expression"], "request.userInfo.username == 'system:serviceaccount:ops:paperclip'")
	perBackend := map[string]int{}
	var pod []string
	for _, v := range spec["validations"].([]celValidation) {
		for _, f := range []string{"job.yaml", "sandbox.yaml", "barepod.yaml", "sandboxtemplate.yaml", "sandboxclaim.yaml"} {
			if strings.Contains(v.Message, "("+f+")") {
				perBackend[f]++
			}
		}
		if strings.Contains(v.Message, "(barepod.yaml)") {
			pod = append(pod, v.Expression)
		}
	}
	// The warm pool's SandboxTemplate (a tenant object) carries the pod
	// spec its pods are made from; the SandboxClaim carries none.
	is.Equal(perBackend, map[string]int{"job.yaml": 5, "sandbox.yaml": 5, "barepod.yaml": 5, "sandboxtemplate.yaml": 5})
	is.True(strings.Contains(pod[0], "has(object.spec) && has(object.spec.serviceAccountName) && object.spec.serviceAccountName == 'paperclip-tenant-sa'"))
	var vars []string
	for _, v := range spec["variables"].([]celVariable) {
		vars = append(vars, v.Name)
	}
	is.True(strings.Contains(strings.Join(vars, " "), "is_job is_sandbox is_barepod"))
}

func TestParseServiceAccountAndUsername(t *testing.T) {
	is := is.New(t)
	ns, name, err := ParseServiceAccount("paperclip/paperclip-k8s")
	is.NoErr(err)
	is.Equal(ns+"/"+name, "paperclip/paperclip-k8s")
	for in, want := range map[string]string{
		"nope":       `--service-account "nope": give <namespace>/<name>`,
		"Bad/x":      `the namespace "Bad" is not a valid namespace name`,
		"ns/x'y":     `the name "x'y" is not a valid ServiceAccount name`,
		"ns/a/b":     `the name "a/b" is not a valid ServiceAccount name`,
		"/paperclip": `the namespace "" is not a valid namespace name`,
	} {
		_, _, err := ParseServiceAccount(in)
		is.True(err != nil)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
	is.Equal(ParseUsername("system:serviceaccount:paperclip:prov"), Identity{Username: "system:serviceaccount:paperclip:prov", Kind: "ServiceAccount", Name: "prov", Namespace: "paperclip"})
	is.Equal(ParseUsername("kubernetes-admin"), Identity{Username: "kubernetes-admin", Kind: "User", Name: "kubernetes-admin"})
	is.Equal(ParseUsername("system:serviceaccount:broken").Kind, "User")
}

// The provider asks who it is once per cluster (SelfSubjectReview).
func TestProviderIdentityIsAskedOnce(t *testing.T) {
	is := is.New(t)
	kube := fake.NewClientset()
	calls := 0
	kube.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		return true, &authnv1.SelfSubjectReview{Status: authnv1.SelfSubjectReviewStatus{UserInfo: authnv1.UserInfo{Username: "system:serviceaccount:paperclip:prov"}}}, nil
	})
	p := &Provider{}
	cl := &cluster{kube: kube}
	values := map[string]any{}
	is.NoErr(p.addProviderIdentity(context.Background(), cl, values))
	is.NoErr(p.addProviderIdentity(context.Background(), cl, values))
	is.Equal(calls, 1)
	is.Equal(values["provider"], map[string]any{"username": "system:serviceaccount:paperclip:prov", "kind": "ServiceAccount", "name": "prov", "namespace": "paperclip"})

	noUser := fake.NewClientset()
	noUser.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authnv1.SelfSubjectReview{}, nil
	})
	anon := &cluster{kube: noUser}
	err := p.addProviderIdentity(context.Background(), anon, values)
	is.True(err != nil)
	if !strings.Contains(err.Error(), "SelfSubjectReview named no user") {
		t.Errorf("no user: %v", err)
	}
}
