package plugin

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// The names of what `paperclip-k8s rbac` prints.
const (
	// ClusterRoleName is the small cluster-wide role bound to the provider.
	ClusterRoleName = "paperclip-k8s"
	// TenantClusterRoleName holds every namespaced permission; it is never
	// bound cluster-wide, only by the provider's RoleBinding in each tenant
	// namespace (resources/provider-rolebinding.yaml names it).
	TenantClusterRoleName = "paperclip-k8s-tenant"
	// PolicyName names the ValidatingAdmissionPolicy and its binding.
	PolicyName = "paperclip-k8s"
	// TenantServiceAccount is the only ServiceAccount workloads may run as
	// (resources/agent-pod.yaml, serviceaccount.yaml). It is bound to
	// nothing and no pod mounts its token: a named identity with no power.
	TenantServiceAccount = "paperclip-tenant-sa"
	// DefaultServiceAccount is the provider's identity when none is named.
	DefaultServiceAccount = "paperclip/paperclip-k8s"
)

// ServiceAccountUsername is the user name the API server gives a
// ServiceAccount.
func ServiceAccountUsername(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// ParseServiceAccount reads "<namespace>/<name>".
func ParseServiceAccount(s string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("--service-account %q: give <namespace>/<name>, e.g. %s", s, DefaultServiceAccount)
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return "", "", fmt.Errorf("--service-account %q: the namespace %q is not a valid namespace name: %s", s, namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", "", fmt.Errorf("--service-account %q: the name %q is not a valid ServiceAccount name: %s", s, name, strings.Join(errs, "; "))
	}
	return namespace, name, nil
}

// Rule is one RBAC policy rule.
type Rule struct {
	APIGroups     []string `json:"apiGroups"`
	Resources     []string `json:"resources"`
	Verbs         []string `json:"verbs"`
	ResourceNames []string `json:"resourceNames,omitempty"`
}

// ClusterRules are the rules of the cluster-wide ClusterRole: the
// cluster-scoped tenant objects (the Namespace: what its claim and apply
// need), create and patch (server-side apply) and get (the
// probe) on the grantsAccess objects by their literal name only, bind on
// the tenant ClusterRole only, and the self reviews. Nothing namespaced is
// granted cluster-wide.
func (p *Provider) ClusterRules() ([]Rule, error) {
	var rules []Rule
	for _, perm := range p.Catalog.Permissions() {
		if !perm.ClusterScoped {
			continue
		}
		rules = append(rules, Rule{APIGroups: []string{perm.Group}, Resources: []string{perm.Resource}, Verbs: perm.Verbs})
	}
	for _, g := range p.Catalog.Grants() {
		name, err := g.GrantName()
		if err != nil {
			return nil, err
		}
		rules = append(rules, Rule{APIGroups: []string{g.API.Group}, Resources: []string{g.API.Resource},
			Verbs: []string{"create", "get", "patch"}, ResourceNames: []string{name}})
	}
	rules = append(rules,
		Rule{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"clusterroles"}, Verbs: []string{"bind"}, ResourceNames: []string{TenantClusterRoleName}},
		Rule{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"selfsubjectaccessreviews"}, Verbs: []string{"create"}},
		Rule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"selfsubjectreviews"}, Verbs: []string{"create"}},
	)
	return rules, nil
}

// TenantRules are the rules of the tenant ClusterRole: every namespaced
// permission the data files need (backends, run objects, pods and their
// log and exec, tenant objects, finalizers).
func (p *Provider) TenantRules() []Rule {
	var rules []Rule
	for _, perm := range p.Catalog.Permissions() {
		if perm.ClusterScoped {
			continue
		}
		rules = append(rules, Rule{APIGroups: []string{perm.Group}, Resources: []string{perm.Resource}, Verbs: perm.Verbs})
	}
	return rules
}

// RBAC returns everything an operator applies for a provider running as
// the ServiceAccount namespace/name, in apply order: the cluster-wide
// ClusterRole and its binding, the tenant ClusterRole, the admission
// policy that confines the identity to tenant namespaces, and the API
// Priority and Fairness objects that pace its requests.
func (p *Provider) RBAC(namespace, name string) ([]map[string]any, error) {
	cluster, err := p.ClusterRules()
	if err != nil {
		return nil, err
	}
	policy, err := p.AdmissionPolicy(namespace, name)
	if err != nil {
		return nil, err
	}
	labels := map[string]any{"app.kubernetes.io/name": "paperclip-k8s"}
	meta := func(n string) map[string]any { return map[string]any{"name": n, "labels": labels} }
	return []map[string]any{
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(ClusterRoleName),
			"rules": cluster,
		},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(TenantClusterRoleName),
			"rules": p.TenantRules(),
		},
		{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(ClusterRoleName),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ClusterRoleName},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": name, "namespace": namespace}},
		},
		policy,
		{
			"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": meta(PolicyName),
			"spec": map[string]any{"policyName": PolicyName, "validationActions": []string{"Deny"}},
		},
		// The worker does not limit its own request rate (a burst of runs
		// goes at the API server's pace): API Priority and Fairness does,
		// with a priority level of the provider's own, so a burst neither
		// starves other clients nor is starved by them. 429s are retried
		// by client-go with the server's Retry-After.
		{
			"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration", "metadata": meta(ClusterRoleName),
			"spec": map[string]any{
				"type": "Limited",
				"limited": map[string]any{
					"nominalConcurrencyShares": 30,
					"lendablePercent":          50,
					"limitResponse": map[string]any{
						"type":    "Queue",
						"queuing": map[string]any{"queues": 16, "handSize": 4, "queueLengthLimit": 100},
					},
				},
			},
		},
		{
			"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": meta(ClusterRoleName),
			"spec": map[string]any{
				"priorityLevelConfiguration": map[string]any{"name": ClusterRoleName},
				"matchingPrecedence":         900,
				"distinguisherMethod":        map[string]any{"type": "ByNamespace"},
				"rules": []any{map[string]any{
					"subjects": []any{map[string]any{"kind": "ServiceAccount", "serviceAccount": map[string]any{"namespace": namespace, "name": name}}},
					"resourceRules": []any{map[string]any{
						"verbs": []string{"*"}, "apiGroups": []string{"*"}, "resources": []string{"*"},
						"namespaces": []string{"*"}, "clusterScope": true,
					}},
					"nonResourceRules": []any{map[string]any{"verbs": []string{"*"}, "nonResourceURLs": []string{"*"}}},
				}},
			},
		},
	}, nil
}

// celValidation is one CEL rule of the admission policy.
type celValidation struct {
	Expression string `json:"expression"`
	Message    string `json:"message"`
}

// celVariable is one named CEL expression of the admission policy.
type celVariable struct {
	Name       string `json:"name"`
	Expression string `json:"expression"`
}

// cel quotes a string as a CEL literal.
func cel(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// markOf is true when the labels l (a CEL map expression) carry the tenant
// mark: the provider's managed-by label and a company id.
func markOf(l string) string {
	return fmt.Sprintf("%s in %s && %s[%s] == %s && %s in %s && %s[%s] != ''",
		cel(policy.LabelManagedBy), l, l, cel(policy.LabelManagedBy), cel(policy.ManagedByValue),
		cel(policy.LabelCompanyID), l, l, cel(policy.LabelCompanyID))
}

// labelsOf is the labels of the object o, or an empty map.
func labelsOf(o string) string {
	return fmt.Sprintf("%s != null && has(%s.metadata) && has(%s.metadata.labels) ? %s.metadata.labels : {}", o, o, o, o)
}

// labelOr is the value of label key (a CEL expression) in the map l, or def.
func labelOr(l, key, def string) string {
	return fmt.Sprintf("(%s in %s ? %s[%s] : %s)", key, l, l, key, cel(def))
}

// levelRank orders Pod Security levels (unset is privileged).
func levelRank(v string) string {
	return fmt.Sprintf("(%s == 'restricted' ? 2 : (%s == 'baseline' ? 1 : 0))", v, v)
}

// fieldPath turns a dotted path into a CEL selection on object, and the
// has() tests that it exists.
func fieldPath(dotted string) (expr, present string) {
	expr = "object"
	var tests []string
	for _, part := range strings.Split(dotted, ".") {
		expr += "." + part
		tests = append(tests, "has("+expr+")")
	}
	return expr, strings.Join(tests, " && ")
}

// celName makes a data file name a CEL identifier.
func celName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}

// AdmissionPolicy is the ValidatingAdmissionPolicy that confines the
// ServiceAccount namespace/name: writes (and exec) only in namespaces
// carrying the tenant mark, Namespaces created with it and Pod Security
// restricted, no adopting, re-marking or weakening a namespace,
// RoleBindings only of the tenant ClusterRole to the provider itself (never
// of a Role: the tenant ServiceAccount has no token, nothing to grant it
// to), no ServiceAccount token Secrets, and objects that carry a pod spec (each file's podSpecPath) that run as the
// tenant ServiceAccount with no token, host namespaces, hostPath or
// privilege. Admission never sees reads: those are confined by RBAC
// (TenantRules are only ever bound per tenant namespace).
func (p *Provider) AdmissionPolicy(namespace, name string) (map[string]any, error) {
	user := ServiceAccountUsername(namespace, name)
	const psa = "pod-security.kubernetes.io/"
	vars := []celVariable{
		{"write", "request.operation == 'CREATE' || request.operation == 'UPDATE'"},
		{"isNamespace", "request.resource.group == '' && request.resource.resource == 'namespaces'"},
		{"isRoleBinding", "request.resource.group == 'rbac.authorization.k8s.io' && request.resource.resource == 'rolebindings' && (!has(request.subResource) || request.subResource == '')"},
		{"isSecret", "request.resource.group == '' && request.resource.resource == 'secrets' && (!has(request.subResource) || request.subResource == '')"},
		{"labels", labelsOf("object")},
		{"oldLabels", labelsOf("oldObject")},
		{"namespaceLabels", labelsOf("namespaceObject")},
		{"inTenantNamespace", markOf("variables.namespaceLabels")},
		{"marked", markOf("variables.labels")},
		{"wasMarked", markOf("variables.oldLabels")},
	}
	mark := fmt.Sprintf("labels %s=%s and %s=<company>", policy.LabelManagedBy, policy.ManagedByValue, policy.LabelCompanyID)
	v := func(expr, msg string) celValidation {
		return celValidation{Expression: expr, Message: "paperclip-k8s admission policy: " + msg}
	}
	vals := []celValidation{
		v("variables.isNamespace || request.namespace == '' || variables.inTenantNamespace",
			"the provider acts only in tenant namespaces ("+mark+"); this namespace is not one"),
		v("!variables.isNamespace || request.operation != 'CREATE' || variables.marked",
			"a namespace the provider creates must carry the tenant mark ("+mark+")"),
		v("!variables.isNamespace || request.operation != 'UPDATE' || variables.wasMarked",
			"the provider may not change a namespace that does not carry the tenant mark (it cannot adopt an existing namespace)"),
		v(fmt.Sprintf("!variables.isNamespace || request.operation != 'UPDATE' || !variables.wasMarked || (variables.marked && variables.labels[%s] == variables.oldLabels[%s])",
			cel(policy.LabelCompanyID), cel(policy.LabelCompanyID)),
			"the tenant mark of a namespace can be neither removed nor given to another company"),
		v(fmt.Sprintf("!variables.isNamespace || !variables.write || (%s == 'restricted' && %s == 'latest')",
			labelOr("variables.labels", cel(psa+"enforce"), ""), labelOr("variables.labels", cel(psa+"enforce-version"), "latest")),
			"a tenant namespace must enforce Pod Security restricted (pod-security.kubernetes.io/enforce=restricted, enforce-version latest)"),
		v(fmt.Sprintf("!variables.isNamespace || request.operation != 'UPDATE' || ['enforce', 'audit', 'warn'].all(m, %s >= %s && (%s == 'latest' || %s == %s))",
			levelRank(labelOr("variables.labels", cel(psa)+" + m", "")), levelRank(labelOr("variables.oldLabels", cel(psa)+" + m", "")),
			labelOr("variables.labels", cel(psa)+" + m + '-version'", "latest"),
			labelOr("variables.labels", cel(psa)+" + m + '-version'", "latest"), labelOr("variables.oldLabels", cel(psa)+" + m + '-version'", "latest")),
			"the provider may not weaken the Pod Security labels (pod-security.kubernetes.io/*) of a namespace"),
		v(fmt.Sprintf("!variables.isRoleBinding || !variables.write || (object.roleRef.kind == 'ClusterRole' && object.roleRef.name == %s)", cel(TenantClusterRoleName)),
			"a RoleBinding the provider makes may reference only the ClusterRole "+TenantClusterRoleName+" (no Role: agent pods hold no ServiceAccount token, so no data file binds one)"),
		v(fmt.Sprintf("!variables.isRoleBinding || !variables.write || !has(object.subjects) || object.subjects.all(s, s.kind == 'ServiceAccount' && s.name == %s && has(s.namespace) && s.namespace == %s)",
			cel(name), cel(namespace)),
			"the ClusterRole "+TenantClusterRoleName+" may be bound only to the provider itself ("+user+")"),
		v("!variables.isSecret || !variables.write || !has(object.type) || object.type != 'kubernetes.io/service-account-token'",
			"the provider may not create or change Secrets of type kubernetes.io/service-account-token"),
	}
	// Every object that carries a pod spec: each backend's workload, and
	// the tenant or run objects pods are made from (a SandboxTemplate).
	withPodSpec := p.Catalog.Used(resource.UseBackend)
	for _, s := range p.Catalog.All() {
		if s.Use != resource.UseBackend && s.PodSpec() != "" {
			withPodSpec = append(withPodSpec, s)
		}
	}
	for _, b := range withPodSpec {
		if b.API == nil || b.PodSpec() == "" {
			continue // a workload with no pod spec (its template has it)
		}
		ps, present := fieldPath(b.PodSpec())
		is := "is_" + celName(b.Name)
		vars = append(vars, celVariable{is, fmt.Sprintf("request.resource.group == %s && request.resource.resource == %s && (!has(request.subResource) || request.subResource == '') && variables.write",
			cel(b.API.Group), cel(b.API.Resource))})
		guard := "!variables." + is
		what := fmt.Sprintf("a %s (%s) ", b.API.Kind, b.File)
		notSet := func(field string) string { return fmt.Sprintf("!(has(%s) && %s)", field, field) }
		containers := func(list string) string {
			l := ps + "." + list
			return fmt.Sprintf("(!has(%s) || %s.all(c, !has(c.securityContext) || ((!has(c.securityContext.privileged) || !c.securityContext.privileged) && (!has(c.securityContext.capabilities) || !has(c.securityContext.capabilities.add) || c.securityContext.capabilities.add.all(x, x == 'NET_BIND_SERVICE')))))", l, l)
		}
		vals = append(vals,
			v(fmt.Sprintf("%s || (%s && has(%s.serviceAccountName) && %s.serviceAccountName == %s)", guard, present, ps, ps, cel(TenantServiceAccount)),
				what+"must run as the ServiceAccount "+TenantServiceAccount+" ("+b.PodSpec()+".serviceAccountName)"),
			v(fmt.Sprintf("%s || (%s && has(%s.automountServiceAccountToken) && !%s.automountServiceAccountToken)", guard, present, ps, ps),
				what+"must set "+b.PodSpec()+".automountServiceAccountToken: false"),
			v(fmt.Sprintf("%s || !(%s) || (%s && %s && %s)", guard, present, notSet(ps+".hostNetwork"), notSet(ps+".hostPID"), notSet(ps+".hostIPC")),
				what+"may not use the host's network, PID or IPC namespace (hostNetwork, hostPID, hostIPC)"),
			v(fmt.Sprintf("%s || !(%s) || !has(%s.volumes) || %s.volumes.all(v, !has(v.hostPath))", guard, present, ps, ps),
				what+"may not mount hostPath volumes"),
			v(fmt.Sprintf("%s || !(%s) || (%s && %s && %s)", guard, present, containers("containers"), containers("initContainers"), containers("ephemeralContainers")),
				what+"may not run privileged containers or add capabilities (other than NET_BIND_SERVICE)"),
		)
	}
	return map[string]any{
		"apiVersion": "admissionregistration.k8s.io/v1",
		"kind":       "ValidatingAdmissionPolicy",
		"metadata":   map[string]any{"name": PolicyName, "labels": map[string]any{"app.kubernetes.io/name": "paperclip-k8s"}},
		"spec": map[string]any{
			"failurePolicy": "Fail",
			"matchConstraints": map[string]any{
				"resourceRules": []any{map[string]any{
					"apiGroups": []string{"*"}, "apiVersions": []string{"*"}, "resources": []string{"*/*"},
					"operations": []string{"CREATE", "UPDATE", "DELETE", "CONNECT"},
				}},
			},
			"matchConditions": []any{map[string]any{
				"name":       "provider-identity",
				"expression": "request.userInfo.username == " + cel(user),
			}},
			"variables":   vars,
			"validations": vals,
		},
	}, nil
}
