package plugin

import (
	"encoding/json"
	"fmt"
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

// podAnnotationsEnv is the worker environment variable with annotations for
// every agent pod (a JSON object of strings), e.g. for a service mesh or
// the cluster autoscaler. It is the operator's; a company's config cannot
// set pod annotations.
const podAnnotationsEnv = "PAPERCLIP_K8S_POD_ANNOTATIONS"

// operatorValues are the template values the operator sets through the
// worker's environment.
func (p *Provider) operatorValues() (map[string]any, error) {
	out := map[string]any{}
	if raw := strings.TrimSpace(p.Getenv(podAnnotationsEnv)); raw != "" {
		var a map[string]string
		if err := json.Unmarshal([]byte(raw), &a); err != nil {
			return nil, fmt.Errorf("worker environment variable %s is not a JSON object of strings (%v); fix it in the environment the Paperclip server starts the plugin with", podAnnotationsEnv, err)
		}
		out["podAnnotations"] = a
	}
	return out, nil
}
