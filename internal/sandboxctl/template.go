package sandboxctl

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// NetworkPolicyName is the name of a template's shared NetworkPolicy.
func NetworkPolicyName(template string) string { return template + "-network-policy" }

func parseTemplate(u *unstructured.Unstructured) (*templateSpec, error) {
	var ts templateSpec
	if err := fromObject(u, &ts, "spec"); err != nil {
		return nil, fmt.Errorf("SandboxTemplate %s/%s spec: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &ts, nil
}

func (ts *templateSpec) managed() bool {
	return ts.NetworkPolicyManagement == "" || ts.NetworkPolicyManagement == "Managed"
}

// reconcileTemplate labels the template with its ref hash and keeps its
// NetworkPolicy: the secure default, or the template's rules, or none when
// Unmanaged.
func (e *extensions) reconcileTemplate(ctx context.Context, ns, name string) error {
	u := e.latest(e.templates, TemplateGVR, ns, name)
	if u == nil || u.GetDeletionTimestamp() != nil {
		return nil // the NetworkPolicy goes with it (garbage collector)
	}
	hash := NameHash(name)
	if u.GetLabels()[TemplateRefHashLabel] != hash {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{TemplateRefHashLabel: hash}}})
		out, err := e.c.dyn.Resource(TemplateGVR).Namespace(ns).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: templateController})
		if err != nil {
			return fmt.Errorf("label SandboxTemplate %s/%s with %s: %w", ns, name, TemplateRefHashLabel, err)
		}
		u = out
	}
	ts, err := parseTemplate(u)
	if err != nil {
		return err
	}
	nps := e.c.kube.NetworkingV1().NetworkPolicies(ns)
	npName := NetworkPolicyName(name)
	var existing *networkingv1.NetworkPolicy
	if obj, ok, _ := e.nps.GetIndexer().GetByKey(ns + "/" + npName); ok {
		existing = obj.(*networkingv1.NetworkPolicy).DeepCopy()
	}

	if !ts.managed() {
		if existing == nil || !controlledBy(existing, u.GetUID()) {
			return nil
		}
		err := nps.Delete(ctx, npName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &existing.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete NetworkPolicy %s/%s of Unmanaged SandboxTemplate %s: %w", ns, npName, name, err)
		}
		return nil
	}

	desired := desiredNetworkPolicy(name, ts)
	if existing == nil {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: npName, Namespace: ns, OwnerReferences: []metav1.OwnerReference{controllerRef(u)}},
			Spec:       desired,
		}
		_, err := nps.Create(ctx, np, metav1.CreateOptions{FieldManager: templateController})
		if apierrors.IsAlreadyExists(err) {
			// The cache is behind; the informer's event queues this again.
			return nil
		}
		if err != nil {
			return fmt.Errorf("create NetworkPolicy %s/%s for SandboxTemplate %s: %w", ns, npName, name, err)
		}
		return nil
	}
	if !controlledBy(existing, u.GetUID()) {
		return fmt.Errorf("refusing to update NetworkPolicy %q as it is not controlled by SandboxTemplate %q", npName, name)
	}
	if equality.Semantic.DeepEqual(existing.Spec, desired) {
		return nil
	}
	existing.Spec = desired
	if _, err := nps.Update(ctx, existing, metav1.UpdateOptions{FieldManager: templateController}); err != nil {
		return fmt.Errorf("update NetworkPolicy %s/%s for SandboxTemplate %s: %w", ns, npName, name, err)
	}
	return nil
}

// desiredNetworkPolicy is the real controller's NetworkPolicy spec: pods
// selected by the template ref hash, both policy types, the template's
// rules or the secure default (ingress only from the sandbox router,
// egress only to public addresses).
func desiredNetworkPolicy(template string, ts *templateSpec) networkingv1.NetworkPolicySpec {
	spec := networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{TemplateRefHashLabel: NameHash(template)}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
	}
	if ts.NetworkPolicy != nil {
		spec.Ingress = ts.NetworkPolicy.Ingress
		spec.Egress = ts.NetworkPolicy.Egress
		// The API server defaults a port's protocol to TCP; do the same so
		// the stored policy compares equal (the real controller would
		// update it on every reconcile).
		tcp := corev1.ProtocolTCP
		for i := range spec.Ingress {
			for j := range spec.Ingress[i].Ports {
				if spec.Ingress[i].Ports[j].Protocol == nil {
					spec.Ingress[i].Ports[j].Protocol = &tcp
				}
			}
		}
		for i := range spec.Egress {
			for j := range spec.Egress[i].Ports {
				if spec.Egress[i].Ports[j].Protocol == nil {
					spec.Egress[i].Ports[j].Protocol = &tcp
				}
			}
		}
		return spec
	}
	spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
		From: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "agent-sandbox-system"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "sandbox-router"}},
		}},
	}}
	spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
		To: []networkingv1.NetworkPolicyPeer{
			{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}}},
			{IPBlock: &networkingv1.IPBlock{CIDR: "::/0", Except: []string{"fc00::/7", "fe80::/10"}}},
		},
	}}
	return spec
}

// applySecureDefaults is the real controller's ApplySandboxSecureDefaults:
// no service-account token unless the template asks for one, and public
// DNS when the secure-default NetworkPolicy applies and no dnsPolicy is set.
func applySecureDefaults(ts *templateSpec, spec *corev1.PodSpec) {
	if spec.AutomountServiceAccountToken == nil {
		spec.AutomountServiceAccountToken = new(false)
	}
	if ts.managed() && ts.NetworkPolicy == nil && spec.DNSPolicy == "" {
		spec.DNSPolicy = corev1.DNSNone
		spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"8.8.8.8", "1.1.1.1"}}
	}
}

// templateHashes returns sandbox-pod-template-hash (FNV-1a of the
// podTemplate's JSON) and sandbox-template-hash (of the blueprint's JSON).
func templateHashes(ts *templateSpec) (podHash, blueprintHash string, err error) {
	pb, err := json.Marshal(ts.PodTemplate)
	if err != nil {
		return "", "", err
	}
	bb, err := json.Marshal(ts.blueprint)
	if err != nil {
		return "", "", err
	}
	return NameHash(string(pb)), NameHash(string(bb)), nil
}
