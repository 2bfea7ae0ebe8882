package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestRBACClusterRoleIsEnough runs the provider as a ServiceAccount bound
// ONLY to the ClusterRole `paperclip-k8s rbac` prints: every lifecycle step
// succeeds through the binary, the probe reports no missing permission, and
// a step outside the role is forbidden.
func TestRBACClusterRoleIsEnough(t *testing.T) {
	is := is.New(t)
	h := newHooks(t, "sandbox", nil)
	ctx := context.Background()
	admin := h.kube()

	cr := clusterRoleFromBinary(t)
	cr.Name = "paperclip-k8s-test-" + randHex(4)
	_, err := admin.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = admin.RbacV1().ClusterRoles().Delete(context.Background(), cr.Name, metav1.DeleteOptions{})
	})
	kc, saNS := serviceAccountKubeconfig(t, h, "paperclip-provider")
	_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: cr.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: cr.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "paperclip-provider", Namespace: saNS}},
	}, metav1.CreateOptions{})
	is.NoErr(err)
	t.Cleanup(func() {
		_ = admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), cr.Name, metav1.DeleteOptions{})
	})
	h.config["kubeconfig"] = string(kc)

	// The probe finds every permission granted.
	var pr probeResult
	h.w.mustCall("environmentProbe", h.base(), &pr)
	for _, d := range pr.Diagnostics {
		t.Errorf("probe diagnostic with the ClusterRole: %+v", d)
	}
	is.True(pr.OK)

	// The sandbox lifecycle.
	l := h.acquire(nil)
	r := h.exec(l, `printf '%s' "$X"; cat`, map[string]any{"env": map[string]string{"X": "env-ok "}, "stdin": "stdin-ok"})
	is.Equal(r.code(), 0)
	is.Equal(r.Stdout, "env-ok stdin-ok")
	var resumed lease
	h.w.mustCall("environmentResumeLease", h.leaseParams(l), &resumed)
	is.Equal(resumed.id(), l.id())
	h.w.mustCall("environmentReleaseLease", h.leaseParams(l), nil)
	h.waitRunGone(l, 60*time.Second)
	l2 := h.acquire(nil)
	h.w.mustCall("environmentDestroyLease", h.leaseParams(l2), nil)
	h.waitRunGone(l2, 60*time.Second)

	// The job lifecycle.
	h.config["backend"] = "job"
	jl := h.acquire(nil)
	pod := h.waitPodAny(jl)
	is.NoErr(h.env.Node.WriteLog(pod.Namespace, pod.Name, "agent", []byte("done\n")))
	h.env.Node.EndLog(pod.Namespace, pod.Name, "agent")
	r = h.exec(jl, "ignored", nil)
	is.Equal(r.Stdout, "done\n")
	h.w.mustCall("environmentDestroyLease", h.leaseParams(jl), nil)
	h.waitRunGone(jl, 60*time.Second)

	// Outside the role: another namespace's Secret cannot be read.
	other := h.namespaceForTest(t, "pck8s-other-")
	_, err = admin.CoreV1().Secrets(other).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "not-yours"}, StringData: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	is.NoErr(err)
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	is.NoErr(err)
	as, err := kubernetes.NewForConfig(rc)
	is.NoErr(err)
	_, err = as.CoreV1().Secrets(other).Get(ctx, "not-yours", metav1.GetOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("reading a Secret in another namespace as the provider: want Forbidden, got %v", err)
	}
	_, err = as.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	is.True(apierrors.IsForbidden(err)) // listing Secrets anywhere
	_, err = as.CoreV1().ConfigMaps(other).List(ctx, metav1.ListOptions{})
	is.True(apierrors.IsForbidden(err)) // a resource the provider never uses
	_, err = as.CoreV1().Pods(other).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}, metav1.CreateOptions{})
	is.True(apierrors.IsForbidden(err)) // pods are created by controllers, never by the provider
	err = as.RbacV1().ClusterRoles().Delete(ctx, cr.Name, metav1.DeleteOptions{})
	is.True(apierrors.IsForbidden(err)) // nor its own role
	is.True(strings.Contains(err.Error(), "system:serviceaccount:"+saNS+":paperclip-provider"))
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
