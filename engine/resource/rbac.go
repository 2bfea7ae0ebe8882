package resource

import (
	"fmt"
	"sort"
	"strings"
)

// Permission is one resource (or subresource) and the verbs the engine uses
// on it.
type Permission struct {
	Group    string
	Resource string // "pods" or "pods/exec"
	Verbs    []string
	// ClusterScoped: the resource is not namespaced (api.clusterScoped in
	// its file), so the permission must be granted cluster-wide; the others
	// are granted in each tenant namespace.
	ClusterScoped bool
}

// useVerbs are the calls the engine makes on objects of each scope:
// tenant objects are server-side applied (patch; create when absent) and,
// when their file has conditions, pruned (get, delete: see pruneVerbs); run
// objects are created, deleted, and read only to check their owner before a
// destroy deletes them (ReleaseOwned); namespaced permissions are granted
// per tenant namespace, never cluster-wide; backends are also read, listed
// and watched (Wait); pods are read, listed and watched; events are
// listed and watched while the engine waits (health rules with event:).
// pruneVerbs are added for tenant objects that can be pruned (files with
// "when" conditions): nothing else is ever read back or deleted, so, for
// instance, the provider cannot delete namespaces.
var pruneVerbs = []string{"get", "delete"}

var useVerbs = map[Use][]string{
	UseTenant:  {"create", "patch"},
	UseRun:     {"create", "delete", "get"},
	UseBackend: {"get", "list", "watch", "create", "delete"},
	UsePod:     {"get", "list", "watch"},
	UseEvent:   {"list", "watch"},
}

// Permissions lists what the provider needs on the catalog's objects,
// merged per resource and sorted, for a ClusterRole or access reviews.
func (c *Catalog) Permissions() []Permission {
	verbs := map[[2]string]map[string]bool{}
	cluster := map[[2]string]bool{}
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
		if s.API.ClusterScoped {
			cluster[[2]string{s.API.Group, s.API.Resource}] = true
		}
		add(s.API.Group, s.API.Resource, useVerbs[s.Use]...)
		if s.Use == UseTenant && len(s.When) > 0 {
			add(s.API.Group, s.API.Resource, pruneVerbs...)
		}
		if s.Claim != nil {
			add(s.API.Group, s.API.Resource, "get", "create") // Claim
		}
		if s.Use == UseBackend && s.Backend != nil && (s.Backend.DeadlinePath != "" || s.Backend.Mode == ModeExec) {
			add(s.API.Group, s.API.Resource, "patch") // SetDeadline; Annotate (the pinned pod of an exec lease)
		}
		if s.Use == UseBackend {
			// Run objects are owned by the workload with blockOwnerDeletion;
			// clusters that enforce ownerReference permissions
			// (OwnerReferencesPermissionEnforcement, e.g. OpenShift) require
			// update on the owner's finalizers for that.
			add(s.API.Group, s.API.Resource+"/finalizers", "update")
		}
		if s.Use == UseBackend {
			// The objects its pods are found through (via) are read.
			for _, v := range c.ViaResources(s) {
				if v.API != nil {
					add(v.API.Group, v.API.Resource, "get")
				}
			}
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
		base, _, _ := strings.Cut(k[1], "/")
		p := Permission{Group: k[0], Resource: k[1], ClusterScoped: cluster[[2]string{k[0], base}]}
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

// GrantName is the literal metadata.name of a resource's template, for a
// grantsAccess object: the cluster-wide ClusterRole grants create and patch
// on that one name, so it cannot be computed from values.
func (s *Resource) GrantName() (string, error) {
	meta, _ := s.Template["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if name == "" || strings.Contains(name, "${") {
		return "", &FileError{File: s.File, Pointer: "/template/metadata/name", Problem: fmt.Sprintf("is %q, but a grantsAccess object needs a literal name (RBAC grants on it by name)", name)}
	}
	return name, nil
}

// Grants returns the tenant resources marked grantsAccess.
func (c *Catalog) Grants() []*Resource {
	var out []*Resource
	for _, s := range c.Used(UseTenant) {
		if s.GrantsAccess {
			out = append(out, s)
		}
	}
	return out
}
