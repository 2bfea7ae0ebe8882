package plugin

import (
	"strings"
)

// ClusterRole is the ClusterRole the provider needs: every resource in the
// resource files with the verbs the engine uses on it, pods/log and
// pods/exec, and SelfSubjectAccessReviews for the probe.
func (p *Provider) ClusterRole(name string) map[string]any {
	var rules []any
	for _, perm := range p.Catalog.Permissions() {
		rules = append(rules, map[string]any{
			"apiGroups": []string{perm.Group},
			"resources": []string{perm.Resource},
			"verbs":     perm.Verbs,
		})
	}
	rules = append(rules, map[string]any{
		"apiGroups": []string{"authorization.k8s.io"},
		"resources": []string{"selfsubjectaccessreviews"},
		"verbs":     []string{"create"},
	})
	return map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1",
		"kind":       "ClusterRole",
		"metadata": map[string]any{
			"name":   name,
			"labels": map[string]string{"app.kubernetes.io/name": strings.TrimSuffix(name, "-provider")},
		},
		"rules": rules,
	}
}
