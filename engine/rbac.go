package engine

import (
	"sort"
)

// Permission is one resource (or subresource) and the verbs the engine uses
// on it.
type Permission struct {
	Group    string
	Resource string // "pods" or "pods/exec"
	Verbs    []string
}

// scopeVerbs are the calls the engine makes on objects of each scope:
// tenant objects are server-side applied (patch; create when absent) and,
// when their file has conditions, pruned (get, delete: see pruneVerbs); run objects are only created and deleted (never
// read: a cluster-wide "get secrets" would let the provider read every
// Secret of the cluster); backends are also read, listed and watched
// (Wait); pods are read, listed and watched.
// pruneVerbs are added for tenant objects that can be pruned (files with
// "when" conditions): nothing else is ever read back or deleted, so, for
// instance, the provider cannot delete namespaces.
var pruneVerbs = []string{"get", "delete"}

var scopeVerbs = map[Scope][]string{
	ScopeTenant:  {"create", "patch"},
	ScopeRun:     {"create", "delete"},
	ScopeBackend: {"get", "list", "watch", "create", "delete"},
	ScopePod:     {"get", "list", "watch"},
}

// Permissions lists what the provider needs on the catalog's objects,
// merged per resource and sorted, for a ClusterRole or access reviews.
func (c *Catalog) Permissions() []Permission {
	verbs := map[[2]string]map[string]bool{}
	add := func(group, resource string, vs ...string) {
		k := [2]string{group, resource}
		if verbs[k] == nil {
			verbs[k] = map[string]bool{}
		}
		for _, v := range vs {
			verbs[k][v] = true
		}
	}
	for _, s := range c.All() {
		if s.API == nil {
			continue
		}
		add(s.API.Group, s.API.Resource, scopeVerbs[s.Scope]...)
		if s.Scope == ScopeTenant && len(s.When) > 0 {
			add(s.API.Group, s.API.Resource, pruneVerbs...)
		}
		if s.Claim != nil {
			add(s.API.Group, s.API.Resource, "get", "create") // Claim
		}
		if s.Scope == ScopeBackend && s.Backend != nil && (s.Backend.DeadlinePath != "" || s.Backend.Mode == ModeExec) {
			add(s.API.Group, s.API.Resource, "patch") // SetDeadline; Annotate (the pinned pod of an exec lease)
		}
		if s.Scope == ScopeBackend {
			// Run objects are owned by the workload with blockOwnerDeletion;
			// clusters that enforce ownerReference permissions
			// (OwnerReferencesPermissionEnforcement, e.g. OpenShift) require
			// update on the owner's finalizers for that.
			add(s.API.Group, s.API.Resource+"/finalizers", "update")
		}
		if s.Logs != nil {
			add(s.API.Group, s.API.Resource+"/"+s.Logs.Subresource, "get")
		}
		if s.Exec != nil {
			// Exec upgrades a connection: WebSocket uses GET, SPDY POST.
			add(s.API.Group, s.API.Resource+"/"+s.Exec.Subresource, "get", "create")
		}
	}
	out := make([]Permission, 0, len(verbs))
	for k, vs := range verbs {
		p := Permission{Group: k[0], Resource: k[1]}
		for v := range vs {
			p.Verbs = append(p.Verbs, v)
		}
		sort.Strings(p.Verbs)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group != out[j].Group {
			return out[i].Group < out[j].Group
		}
		return out[i].Resource < out[j].Resource
	})
	return out
}
