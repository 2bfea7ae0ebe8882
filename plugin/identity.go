package plugin

import (
	"context"
	"fmt"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Identity is who the provider is on a cluster, as the API server says.
type Identity struct {
	// Username is the authenticated user name, e.g.
	// system:serviceaccount:paperclip:paperclip-k8s.
	Username string
	// Kind is ServiceAccount or User.
	Kind string
	// Name is the ServiceAccount's name, or the user name.
	Name string
	// Namespace is the ServiceAccount's namespace ("" for a User).
	Namespace string
}

// ParseUsername splits a user name into a ServiceAccount
// (system:serviceaccount:<namespace>:<name>) or a User.
func ParseUsername(username string) Identity {
	if rest, ok := strings.CutPrefix(username, "system:serviceaccount:"); ok {
		if ns, name, ok := strings.Cut(rest, ":"); ok && ns != "" && name != "" && !strings.Contains(name, ":") {
			return Identity{Username: username, Kind: "ServiceAccount", Name: name, Namespace: ns}
		}
	}
	return Identity{Username: username, Kind: "User", Name: username}
}

// Values are the template values of the identity (${provider.*}), used by
// resources/provider-rolebinding.yaml.
func (id Identity) Values() map[string]any {
	return map[string]any{"username": id.Username, "kind": id.Kind, "name": id.Name, "namespace": id.Namespace}
}

// providerIdentity asks the API server who the provider is (a
// SelfSubjectReview, authentication.k8s.io/v1, GA since Kubernetes 1.28),
// once per cluster.
func (p *Provider) providerIdentity(ctx context.Context, cl *cluster) (Identity, error) {
	// Credentials do not change under a cluster (a new kubeconfig is a new
	// cluster), so the answer is kept on it.
	if id, ok := cl.identity.Load().(Identity); ok {
		return id, nil
	}
	r, err := cl.kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, fmt.Errorf("asking the API server who the provider is (create selfsubjectreviews.authentication.k8s.io, granted by the ClusterRole `paperclip-k8s rbac` prints): %w", err)
	}
	if r.Status.UserInfo.Username == "" {
		return Identity{}, fmt.Errorf("the API server's SelfSubjectReview named no user for the provider's credentials; the provider cannot bind its own permissions in the tenant namespace")
	}
	id := ParseUsername(r.Status.UserInfo.Username)
	cl.identity.Store(id)
	return id, nil
}

// addProviderIdentity sets values["provider"] (the provider's own identity)
// for the tenant objects that grant it its permissions in the tenant
// namespace (resources/provider-rolebinding.yaml).
func (p *Provider) addProviderIdentity(ctx context.Context, cl *cluster, values map[string]any) error {
	id, err := p.providerIdentity(ctx, cl)
	if err != nil {
		return err
	}
	values["provider"] = id.Values()
	return nil
}
