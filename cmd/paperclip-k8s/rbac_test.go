package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// rbacFromBinary returns the documents `paperclip-k8s rbac
// --service-account <sa>` prints, in order.
func rbacFromBinary(t testing.TB, sa string) []*unstructured.Unstructured {
	t.Helper()
	out, err := exec.Command(workerBin, "rbac", "--service-account", sa).Output()
	if err != nil {
		t.Fatalf("paperclip-k8s rbac --service-account %s: %v", sa, err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	var docs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("paperclip-k8s rbac printed invalid YAML: %v\n%s", err, out)
		}
		if m != nil {
			docs = append(docs, &unstructured.Unstructured{Object: m})
		}
	}
	return docs
}

func TestRBACCommand(t *testing.T) {
	is := is.New(t)
	docs := rbacFromBinary(t, "ops/paperclip")
	var kinds []string
	for _, d := range docs {
		kinds = append(kinds, d.GetKind()+"/"+d.GetName())
	}
	is.Equal(kinds, []string{"ClusterRole/paperclip-k8s", "ClusterRole/paperclip-k8s-tenant", "ClusterRoleBinding/paperclip-k8s",
		"ValidatingAdmissionPolicy/paperclip-k8s", "ValidatingAdmissionPolicyBinding/paperclip-k8s",
		"PriorityLevelConfiguration/paperclip-k8s", "FlowSchema/paperclip-k8s"})
	subjects, _, _ := unstructured.NestedSlice(docs[2].Object, "subjects")
	is.Equal(subjects, []any{map[string]any{"kind": "ServiceAccount", "name": "paperclip", "namespace": "ops"}})
	cond, _, _ := unstructured.NestedSlice(docs[3].Object, "spec", "matchConditions")
	is.Equal(cond[0].(map[string]any)["expression"], "request.userInfo.username == 'system:serviceaccount:ops:paperclip'")

	// The default identity, and a malformed flag named with the fix.
	def := rbacFromBinary(t, "paperclip/paperclip-k8s")
	out, err := exec.Command(workerBin, "rbac").Output()
	is.NoErr(err)
	is.True(bytes.Contains(out, []byte("system:serviceaccount:paperclip:paperclip-k8s")))
	is.Equal(len(def), 7)
	cmd := exec.Command(workerBin, "rbac", "--service-account", "no-slash")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	is.True(cmd.Run() != nil)
	is.True(strings.Contains(stderr.String(), `--service-account "no-slash": give <namespace>/<name>`))
}

// applyDocs creates the documents as the admin and deletes them at cleanup.
func applyDocs(t testing.TB, h *hooks, docs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	groups, err := restmapper.GetAPIGroupResources(h.kube().Discovery())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	for _, d := range docs {
		m, err := mapper.RESTMapping(d.GroupVersionKind().GroupKind(), d.GroupVersionKind().Version)
		if err != nil {
			t.Fatalf("%s %s: %v", d.GetKind(), d.GetName(), err)
		}
		if _, err := h.dyn().Resource(m.Resource).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatalf("applying %s %s: %v", d.GetKind(), d.GetName(), err)
		}
		t.Cleanup(func() {
			_ = h.dyn().Resource(m.Resource).Delete(context.Background(), d.GetName(), metav1.DeleteOptions{})
		})
	}
}

// wantDenied asserts that the API server refused a request (Forbidden, or
// Invalid from admission) with an error that contains every want.
func wantDenied(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: allowed, want denied", what)
		return
	}
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Errorf("%s: %v, want Forbidden or Invalid", what, err)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: %q, want it to contain %q", what, err.Error(), w)
		}
	}
}

const policyDenied = "ValidatingAdmissionPolicy 'paperclip-k8s' with binding 'paperclip-k8s' denied request: paperclip-k8s admission policy: "

// TestRBACConfinesTheProvider runs the provider as a ServiceAccount bound
// to exactly what `paperclip-k8s rbac --service-account` prints (the
// admission policy included): every hook works on both backends, and each
// way the first edition's ClusterRole led out of the tenant namespaces is
// refused by the API server.
func TestRBACConfinesTheProvider(t *testing.T) {
	is := is.New(t)
	root := filepath.Join(t.TempDir(), "ws")
	h := newHooks(t, "sandbox", map[string]any{"workspacePath": root})
	ctx := context.Background()
	admin := h.kube()

	kc, saNS := serviceAccountKubeconfig(t, h, "paperclip-provider")
	user := "system:serviceaccount:" + saNS + ":paperclip-provider"
	applyDocs(t, h, rbacFromBinary(t, saNS+"/paperclip-provider"))
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	is.NoErr(err)
	rc.WarningHandler = rest.NoWarnings{} // Pod Security warns about the escalations below
	as, err := kubernetes.NewForConfig(rc)
	is.NoErr(err)
	asDyn, err := dynamic.NewForConfig(rc)
	is.NoErr(err)

	// The authorizer and the admission plugin load what was applied from
	// their informers: wait until a request only the policy refuses (the
	// provider binding itself outside a tenant namespace, dry run) is
	// refused by it.
	selfBinding := func(ns, name string, subject rbacv1.Subject) *rbacv1.RoleBinding {
		return &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "paperclip-k8s-tenant"},
			Subjects:   []rbacv1.Subject{subject},
		}
	}
	// The cluster-wide role lets the provider create and patch only the
	// RoleBinding named paperclip-k8s-provider, which server-side apply
	// does (a plain create has no name to authorize).
	apply := func(b *rbacv1.RoleBinding, dryRun bool) error {
		b.TypeMeta = metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"}
		opts := metav1.PatchOptions{FieldManager: "paperclip-k8s"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err := as.RbacV1().RoleBindings(b.Namespace).Patch(ctx, b.Name, types.ApplyPatchType, []byte(mustJSON(t, b)), opts)
		return err
	}
	provider := rbacv1.Subject{Kind: "ServiceAccount", Name: "paperclip-provider", Namespace: saNS}
	eventually(t, 30*time.Second, "the admission policy refuses the provider's binding outside a tenant namespace", func() error {
		err := apply(selfBinding(saNS, "paperclip-k8s-provider", provider), true)
		if err == nil || !strings.Contains(err.Error(), policyDenied) {
			return fmt.Errorf("not refused by the policy yet: %v", err)
		}
		return nil
	})

	h.config["kubeconfig"] = string(kc)

	// Before the first acquire the probe finds every cluster-wide
	// permission, and says the namespaced ones come with the tenant.
	var pr probeResult
	h.w.mustCall("environmentProbe", h.base(), &pr)
	is.True(pr.OK)
	is.Equal(len(pr.Diagnostics), 1)
	is.Equal(pr.Diagnostics[0].Code, "tenant-permissions-pending")
	is.Equal(pr.Diagnostics[0].Severity, "info")
	is.True(strings.Contains(pr.Diagnostics[0].Message, "RoleBinding paperclip-k8s-provider"))

	// The sandbox backend: every hook.
	l := h.acquire(nil)
	tenant := h.namespace()
	rb, err := admin.RbacV1().RoleBindings(tenant).Get(ctx, "paperclip-k8s-provider", metav1.GetOptions{})
	is.NoErr(err)
	is.Equal(rb.Subjects, []rbacv1.Subject{provider}) // the provider learnt who it is
	h.probeClean()
	h.realizeAndExec(l)
	host := t.TempDir()
	writeFile(t, filepath.Join(host, "in.txt"), []byte("synced\n"), 0o644)
	h.syncFile(l, "environmentSyncIn", "rbac-in", filepath.Join(host, "in.txt"), filepath.Join(root, "in.txt"))
	is.Equal(readString(t, filepath.Join(root, "in.txt")), "synced\n")
	h.syncFile(l, "environmentSyncOut", "rbac-out", filepath.Join(root, "in.txt"), filepath.Join(host, "out.txt"))
	is.Equal(readString(t, filepath.Join(host, "out.txt")), "synced\n")
	var resumed lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &resumed)
	is.Equal(resumed.id(), l.id())
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.waitRunGone(l, 60*time.Second)
	l2 := h.acquire(nil)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l2), nil)
	h.waitRunGone(l2, 60*time.Second)

	// The job backend: every hook it has.
	h.config["backend"] = "job"
	jl := h.acquire(nil)
	var jr lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(jl), &jr)
	is.Equal(jr.id(), jl.id())
	pod := h.waitPodAny(jl)
	is.NoErr(h.env.Node.WriteLog(pod.Namespace, pod.Name, "agent", []byte("done\n")))
	h.env.Node.EndLog(pod.Namespace, pod.Name, "agent")
	r := h.exec(jl, "ignored", nil)
	is.Equal(r.Stdout, "done\n")
	h.w.mustCall("environmentReleaseLease", h.leaseParams(jl), nil)
	h.waitRunGone(jl, 60*time.Second)
	jl2 := h.acquire(nil)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(jl2), nil)
	h.waitRunGone(jl2, 60*time.Second)

	// What lies outside: a namespace without the tenant mark, with a pod,
	// a Secret, a Job and a NetworkPolicy, and a pod in kube-system.
	other := h.namespaceForTest(t, "pck8s-other-")
	victim := func(ns string) string {
		p, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "victim-"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
		}, metav1.CreateOptions{})
		is.NoErr(err)
		t.Cleanup(func() { _ = admin.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}) })
		return p.Name
	}
	otherPod, systemPod := victim(other), victim("kube-system")
	_, err = admin.CoreV1().Secrets(other).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-yours"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	is.NoErr(err)
	_, err = admin.BatchV1().Jobs(other).Create(ctx, job("not-yours", nil), metav1.CreateOptions{})
	is.NoErr(err)
	_, err = admin.NetworkingV1().NetworkPolicies(other).Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "not-yours"}}, metav1.CreateOptions{})
	is.NoErr(err)

	// Exec into a pod and read a pod or its log outside the tenants.
	for _, target := range []struct{ ns, pod string }{{other, otherPod}, {"kube-system", systemPod}} {
		for _, verb := range []string{"POST", "GET"} {
			err := as.CoreV1().RESTClient().Verb(verb).Namespace(target.ns).Resource("pods").Name(target.pod).SubResource("exec").
				Param("container", "c").Param("command", "id").Param("stdout", "true").Do(ctx).Error()
			rbacVerb := map[string]string{"POST": "create", "GET": "get"}[verb]
			wantDenied(t, "exec ("+verb+") into "+target.ns+"/"+target.pod, err,
				`User "`+user+`" cannot `+rbacVerb+` resource "pods/exec" in API group "" in the namespace "`+target.ns+`"`)
		}
		_, err := as.CoreV1().Pods(target.ns).Get(ctx, target.pod, metav1.GetOptions{})
		wantDenied(t, "get pod "+target.ns+"/"+target.pod, err, `cannot get resource "pods" in API group "" in the namespace "`+target.ns+`"`)
		err = as.CoreV1().Pods(target.ns).GetLogs(target.pod, &corev1.PodLogOptions{}).Do(ctx).Error()
		wantDenied(t, "read the log of "+target.ns+"/"+target.pod, err, `cannot get resource "pods/log" in API group "" in the namespace "`+target.ns+`"`)
	}
	_, err = as.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	wantDenied(t, "list pods cluster-wide", err, `cannot list resource "pods" in API group "" at the cluster scope`)
	_, err = as.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	wantDenied(t, "list secrets cluster-wide", err, `cannot list resource "secrets"`)

	// Privileged, hostPath and hostNetwork workloads, and one with another
	// ServiceAccount: refused by the policy in a tenant namespace, by RBAC
	// anywhere else.
	privileged := func(s *corev1.PodSpec) {
		s.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
	}
	hostPath := func(s *corev1.PodSpec) {
		s.Volumes = []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
	}
	for _, c := range []struct {
		name   string
		mutate func(*corev1.PodSpec)
		msg    string
	}{
		{"privileged", privileged, "a Job (job.yaml) may not run privileged containers"},
		{"hostpath", hostPath, "a Job (job.yaml) may not mount hostPath volumes"},
		{"default-sa", func(s *corev1.PodSpec) { s.ServiceAccountName = "default" }, "a Job (job.yaml) must run as the ServiceAccount paperclip-tenant-sa"},
		{"token", func(s *corev1.PodSpec) { s.AutomountServiceAccountToken = ptr(true) }, "a Job (job.yaml) must set spec.template.spec.automountServiceAccountToken: false"},
		{"hostpid", func(s *corev1.PodSpec) { s.HostPID = true }, "a Job (job.yaml) may not use the host's network, PID or IPC namespace"},
	} {
		_, err := as.BatchV1().Jobs(tenant).Create(ctx, job("evil-"+c.name, c.mutate), metav1.CreateOptions{})
		wantDenied(t, "a "+c.name+" Job in the tenant namespace", err, policyDenied+c.msg)
		_, err = as.BatchV1().Jobs(other).Create(ctx, job("evil-"+c.name, c.mutate), metav1.CreateOptions{})
		wantDenied(t, "a "+c.name+" Job in another namespace", err, `cannot create resource "jobs" in API group "batch" in the namespace "`+other+`"`)
	}
	_, err = as.BatchV1().Jobs(tenant).Create(ctx, job("fine", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	is.NoErr(err) // the same Job without the escalation passes: each refusal above is the escalation's
	for _, ns := range []string{tenant, other} {
		_, err = asDyn.Resource(gvrSandbox).Namespace(ns).Create(ctx, hostNetworkSandbox(), metav1.CreateOptions{})
		if ns == tenant {
			wantDenied(t, "a hostNetwork Sandbox in the tenant namespace", err, policyDenied+"a Sandbox (sandbox.yaml) may not use the host's network, PID or IPC namespace")
		} else {
			wantDenied(t, "a hostNetwork Sandbox in another namespace", err, `cannot create resource "sandboxes" in API group "agents.x-k8s.io" in the namespace "`+other+`"`)
		}
	}

	// Namespaces: no Pod Security change or tenant mark on one that is
	// not a tenant, no weakening a tenant, no moving or removing its mark,
	// no new namespace without the mark or Pod Security restricted.
	nsPatch := func(ns string, labels map[string]any) error {
		b := fmt.Sprintf(`{"metadata":{"labels":%s}}`, mustJSON(t, labels))
		_, err := as.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(b), metav1.PatchOptions{})
		return err
	}
	notAdopted := policyDenied + "the provider may not change a namespace that does not carry the tenant mark"
	wantDenied(t, "privileged Pod Security on a namespace without the mark", nsPatch(other, map[string]any{"pod-security.kubernetes.io/enforce": "privileged"}), notAdopted)
	wantDenied(t, "privileged Pod Security on kube-system", nsPatch("kube-system", map[string]any{"pod-security.kubernetes.io/enforce": "privileged"}), notAdopted)
	wantDenied(t, "the tenant mark on an existing namespace", nsPatch(other, map[string]any{"paperclip.io/managed-by": "paperclip-k8s-plugin", "paperclip.io/company-id": h.company}), notAdopted)
	wantDenied(t, "enforce privileged on the tenant", nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/enforce": "privileged"}), policyDenied+"a tenant namespace must enforce Pod Security restricted")
	wantDenied(t, "enforce an old version on the tenant", nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/enforce-version": "v1.20"}), policyDenied+"a tenant namespace must enforce Pod Security restricted")
	wantDenied(t, "no Pod Security enforce on the tenant", nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/enforce": nil}), policyDenied+"a tenant namespace must enforce Pod Security restricted")
	wantDenied(t, "audit baseline on the tenant", nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/audit": "baseline"}), policyDenied+"the provider may not weaken the Pod Security labels")
	wantDenied(t, "no warn on the tenant", nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/warn": nil}), policyDenied+"the provider may not weaken the Pod Security labels")
	wantDenied(t, "the tenant given to another company", nsPatch(tenant, map[string]any{"paperclip.io/company-id": "someone-else"}), policyDenied+"the tenant mark of a namespace can be neither removed nor given to another company")
	wantDenied(t, "the tenant mark removed", nsPatch(tenant, map[string]any{"paperclip.io/managed-by": nil}), policyDenied+"the tenant mark of a namespace can be neither removed nor given to another company")
	is.NoErr(nsPatch(tenant, map[string]any{"pod-security.kubernetes.io/audit": "restricted", "paperclip.io/note": "x"})) // what keeps the rules passes
	_, err = as.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pck8s-unmarked-" + randHex(3),
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	wantDenied(t, "a namespace without the mark", err, policyDenied+"a namespace the provider creates must carry the tenant mark")
	_, err = as.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pck8s-lax-" + randHex(3),
		Labels: map[string]string{"paperclip.io/managed-by": "paperclip-k8s-plugin", "paperclip.io/company-id": "c"}}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	wantDenied(t, "a namespace without Pod Security restricted", err, policyDenied+"a tenant namespace must enforce Pod Security restricted")

	// A ServiceAccount token Secret for a privileged account.
	for _, ns := range []string{tenant, "kube-system"} {
		_, err = as.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "token", Annotations: map[string]string{corev1.ServiceAccountNameKey: "default"}},
			Type:       corev1.SecretTypeServiceAccountToken,
		}, metav1.CreateOptions{})
		if ns == tenant {
			wantDenied(t, "a service-account-token Secret in the tenant namespace", err, policyDenied+"the provider may not create or change Secrets of type kubernetes.io/service-account-token")
		} else {
			wantDenied(t, "a service-account-token Secret in kube-system", err, `cannot create resource "secrets" in API group "" in the namespace "kube-system"`)
		}
	}

	// Deleting what is not a tenant's.
	err = as.CoreV1().Secrets(other).Delete(ctx, "not-yours", metav1.DeleteOptions{})
	wantDenied(t, "delete a Secret in another namespace", err, `cannot delete resource "secrets" in API group "" in the namespace "`+other+`"`)
	err = as.BatchV1().Jobs(other).Delete(ctx, "not-yours", metav1.DeleteOptions{})
	wantDenied(t, "delete a Job in another namespace", err, `cannot delete resource "jobs" in API group "batch" in the namespace "`+other+`"`)
	err = as.NetworkingV1().NetworkPolicies(other).Delete(ctx, "not-yours", metav1.DeleteOptions{})
	wantDenied(t, "delete a NetworkPolicy in another namespace", err, `cannot delete resource "networkpolicies" in API group "networking.k8s.io" in the namespace "`+other+`"`)

	// RoleBindings: to cluster-admin or admin, the tenant role for anyone
	// else or outside a tenant, any Role at all.
	for _, role := range []string{"cluster-admin", "admin"} {
		b := selfBinding(tenant, "evil-"+role, provider)
		b.RoleRef.Name = role
		_, err = as.RbacV1().RoleBindings(tenant).Create(ctx, b, metav1.CreateOptions{})
		wantDenied(t, "bind "+role+" in the tenant namespace", err, `is attempting to grant RBAC permissions not currently held`)
	}
	stranger := rbacv1.Subject{Kind: "ServiceAccount", Name: "default", Namespace: tenant}
	_, err = as.RbacV1().RoleBindings(tenant).Create(ctx, selfBinding(tenant, "evil-share", stranger), metav1.CreateOptions{})
	wantDenied(t, "bind paperclip-k8s-tenant to another subject", err, policyDenied+"the ClusterRole paperclip-k8s-tenant may be bound only to the provider itself ("+user+")")
	_, err = as.RbacV1().RoleBindings(tenant).Create(ctx, selfBinding(tenant, "evil-user", rbacv1.Subject{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "mallory"}), metav1.CreateOptions{})
	wantDenied(t, "bind paperclip-k8s-tenant to a user", err, policyDenied+"the ClusterRole paperclip-k8s-tenant may be bound only to the provider itself")
	_, err = as.RbacV1().RoleBindings(tenant).Patch(ctx, "paperclip-k8s-provider", types.MergePatchType,
		[]byte(`{"subjects":[{"kind":"ServiceAccount","name":"default","namespace":"`+tenant+`"}]}`), metav1.PatchOptions{})
	wantDenied(t, "rebind the provider's own binding to another subject", err, policyDenied+"the ClusterRole paperclip-k8s-tenant may be bound only to the provider itself")
	for _, ns := range []string{other, "kube-system"} {
		err = apply(selfBinding(ns, "paperclip-k8s-provider", provider), false)
		wantDenied(t, "bind paperclip-k8s-tenant to itself in "+ns, err, policyDenied+"the provider acts only in tenant namespaces")
		_, err = as.RbacV1().RoleBindings(ns).Create(ctx, selfBinding(ns, "paperclip-k8s-provider", provider), metav1.CreateOptions{})
		wantDenied(t, "create (not apply) its binding in "+ns, err, `cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace "`+ns+`"`)
	}
	_, err = as.RbacV1().RoleBindings(other).Create(ctx, selfBinding(other, "another-name", provider), metav1.CreateOptions{})
	wantDenied(t, "any other RoleBinding outside a tenant", err, `cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace "`+other+`"`)
	// A Role an earlier version left in the tenant (pods/log get, which the
	// provider holds, so RBAC's escalation check lets it through): the
	// policy refuses to bind it, even to the tenant's own ServiceAccount.
	_, err = admin.RbacV1().Roles(tenant).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "paperclip-tenant-role"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/log"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	is.NoErr(err)
	for _, sub := range []rbacv1.Subject{
		{Kind: "ServiceAccount", Name: "paperclip-tenant-sa", Namespace: tenant},
		{Kind: "ServiceAccount", Name: "default", Namespace: "kube-system"},
	} {
		roleBinding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "evil-role"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "paperclip-tenant-role"},
			Subjects:   []rbacv1.Subject{sub},
		}
		_, err = as.RbacV1().RoleBindings(tenant).Create(ctx, roleBinding, metav1.CreateOptions{})
		wantDenied(t, "a Role bound to "+sub.Namespace+"/"+sub.Name, err, policyDenied+"a RoleBinding the provider makes may reference only the ClusterRole paperclip-k8s-tenant")
	}

	// And the cluster-wide role does not reach further.
	err = as.RbacV1().ClusterRoles().Delete(ctx, "paperclip-k8s", metav1.DeleteOptions{})
	wantDenied(t, "delete its own ClusterRole", err, `cannot delete resource "clusterroles"`)
	_, err = as.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "evil"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "paperclip-k8s-tenant"},
		Subjects:   []rbacv1.Subject{provider},
	}, metav1.CreateOptions{})
	wantDenied(t, "bind the tenant role cluster-wide", err, `cannot create resource "clusterrolebindings"`)
	err = as.CoreV1().Namespaces().Delete(ctx, other, metav1.DeleteOptions{})
	wantDenied(t, "delete a namespace", err, `cannot delete resource "namespaces"`)
}

// job is a Job like the provider's (tenant ServiceAccount, no token), with
// mutate applied to its pod spec.
func job(name string, mutate func(*corev1.PodSpec)) *batchv1.Job {
	spec := corev1.PodSpec{
		ServiceAccountName:           "paperclip-tenant-sa",
		AutomountServiceAccountToken: ptr(false),
		RestartPolicy:                corev1.RestartPolicyNever,
		Containers:                   []corev1.Container{{Name: "agent", Image: "x"}},
	}
	if mutate != nil {
		mutate(&spec)
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       batchv1.JobSpec{Suspend: ptr(true), Template: corev1.PodTemplateSpec{Spec: spec}},
	}
}

// hostNetworkSandbox is a Sandbox like the provider's on the host network.
func hostNetworkSandbox() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
		"metadata": map[string]any{"name": "evil-hostnetwork"},
		"spec": map[string]any{"podTemplate": map[string]any{"spec": map[string]any{
			"serviceAccountName": "paperclip-tenant-sa", "automountServiceAccountToken": false, "hostNetwork": true,
			"containers": []any{map[string]any{"name": "agent", "image": "x"}},
		}}},
	}}
}

func ptr[T any](v T) *T { return &v }

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// namespaceForTest creates a namespace deleted at cleanup.
func (h *hooks) namespaceForTest(t testing.TB, prefix string) string {
	t.Helper()
	ns, err := h.kube().CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.kube().CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// probeClean asserts that the probe passes and says nothing (once the
// tenant exists, every permission is there).
func (h *hooks) probeClean() {
	h.t.Helper()
	is := is.New(h.t)
	var pr probeResult
	h.w.mustCall("environmentProbe", h.base(), &pr)
	is.True(pr.OK)
	for _, d := range pr.Diagnostics {
		h.t.Errorf("probe diagnostic once the tenant exists: %+v", d)
	}
}

// realizeAndExec realizes l's workspace and runs a command in it that
// prints an env value and its stdin.
func (h *hooks) realizeAndExec(l lease) {
	h.t.Helper()
	is := is.New(h.t)
	h.w.mustCall("environmentRealizeWorkspace", h.with(map[string]any{"lease": l, "workspace": map[string]any{"localPath": "/x"}}), nil)
	r := h.exec(l, `printf '%s' "$X"; cat`, map[string]any{"env": map[string]string{"X": "env-ok "}, "stdin": "stdin-ok"})
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, "env-ok stdin-ok")
}
