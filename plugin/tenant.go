package plugin

import (
	"os"
	"strings"
	"sync"
)

// serviceAccountNamespaceFile is where a pod's ServiceAccount namespace is
// mounted.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

var ownNamespaceOnce = sync.OnceValue(func() string {
	b, err := os.ReadFile(serviceAccountNamespaceFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// ownNamespace is the namespace the worker runs in, when it runs in a pod:
// PAPERCLIP_K8S_NAMESPACE or POD_NAMESPACE (the operator's), else the
// ServiceAccount's mounted namespace. It is never a tenant namespace.
func (p *Provider) ownNamespace() string {
	for _, k := range []string{"PAPERCLIP_K8S_NAMESPACE", "POD_NAMESPACE"} {
		if v := strings.TrimSpace(p.Getenv(k)); v != "" {
			return v
		}
	}
	return ownNamespaceOnce()
}
