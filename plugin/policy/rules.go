package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// Cross-field rules: what the schema cannot say (credentials, namespace
// length, registry, CIDRs and host names, workspace path, backend,
// adapters, images against imageAllowList, resources against the tenant
// limits). They run on the defaulted config and report at the pointer of
// the value to change.

// ReservedEnvKeys may not be set by adapters: the provider sets them.
var ReservedEnvKeys = []string{"BOOTSTRAP_TOKEN", EnvEgressPolicy, EnvEgressGrantPath, EnvEgressAllowFqdns, EnvEgressAllowCidrs}

// check applies the rules a JSON Schema cannot express: those that span
// fields or need real parsing. Each skips a value that already has an error.
func (v *validation) check(backends []string, aliases map[string]string, idle map[string][]string) {
	c := &v.cfg

	// Credentials (the reference's refine).
	if !v.bad("") && !v.bad("/inCluster") && !v.bad("/kubeconfig") && !c.InCluster && v.secret == "" {
		v.add("", authMessage)
	}

	// Namespace.
	for _, p := range ReservedPrefixes {
		if strings.HasPrefix(c.NamespacePrefix, p) && !v.bad("/namespacePrefix") {
			v.add("/namespacePrefix", fmt.Sprintf("%q starts with %q, a prefix reserved for the cluster's own namespaces; tenant namespaces need a prefix of their own, e.g. \"paperclip-\"", c.NamespacePrefix, p))
		}
	}
	if c.CompanySlug != "" && !v.bad("/namespacePrefix") && !v.bad("/companySlug") {
		if _, err := NamespaceName(c.NamespacePrefix, c.CompanySlug); err != nil {
			v.add("/companySlug", err.Error())
		}
	}

	// Registry.
	if c.ImageRegistry != "" && !v.bad("/imageRegistry") {
		if msg := registryProblem(c.ImageRegistry); msg != "" {
			v.add("/imageRegistry", shortQuote(c.ImageRegistry)+" "+msg)
		} else {
			c.ImageRegistry = strings.TrimRight(c.ImageRegistry, "/")
			v.m["imageRegistry"] = c.ImageRegistry
		}
	}

	// CIDRs and host names, item by item (items with schema errors are
	// already reported).
	if items, ok := v.stringItems("/egressAllowCidrs"); ok {
		var out []string
		seen := map[string]bool{}
		for _, it := range items {
			p, err := ParseCIDR(it.s)
			if err != nil {
				v.add(fmt.Sprintf("/egressAllowCidrs/%d", it.i), shortQuote(it.s)+" "+err.Error())
				continue
			}
			if canon := p.String(); !seen[canon] {
				seen[canon] = true
				out = append(out, canon)
			}
		}
		if !v.bad("/egressAllowCidrs") {
			c.EgressAllowCidrs = nonNil(out)
			v.m["egressAllowCidrs"] = toAnySlice(c.EgressAllowCidrs)
		}
	}
	if items, ok := v.stringItems("/egressAllowFqdns"); ok {
		var all []string
		for _, it := range items {
			if _, err := canonicalFqdn(it.s); err != nil {
				v.add(fmt.Sprintf("/egressAllowFqdns/%d", it.i), shortQuote(it.s)+" "+err.Error())
			}
			all = append(all, it.s)
		}
		if !v.bad("/egressAllowFqdns") {
			c.EgressAllowFqdns = canonicalFqdns(all)
			v.m["egressAllowFqdns"] = toAnySlice(c.EgressAllowFqdns)
		}
	}

	// Workspace path.
	if !v.bad("/workspacePath") {
		p := c.WorkspacePath
		switch {
		case slices.Contains(strings.Split(p, "/"), ".."):
			v.add("/workspacePath", shortQuote(p)+` must not contain ".." segments: give the absolute path, e.g. "/workspace"`)
		case path.Clean(p) == "/":
			v.add("/workspacePath", `must not be "/": use a directory such as "/workspace"`)
		default:
			c.WorkspacePath = path.Clean(p)
			v.m["workspacePath"] = c.WorkspacePath
		}
	}

	v.checkBackend(backends, aliases)
	v.checkIdlePods(idle)

	v.checkAdapters()
	v.checkImages()
	v.checkResources()
}

// checkImages bounds the image of every adapter a run can use (after
// imageRegistry) by imageAllowList, when it is set.
func (v *validation) checkImages() {
	c := &v.cfg
	if len(c.ImageAllowList) == 0 || v.bad("/imageAllowList") || v.bad("/imageRegistry") || v.bad("/adapters") {
		return
	}
	var out []string
	for _, t := range availableAdapters(c.Adapters) {
		d, err := Defaults(t, c.Adapters)
		if err != nil {
			continue // reported by checkAdapters
		}
		var na *NotAllowedError
		if _, err := ResolveImage("", d.RuntimeImage, c.ImageAllowList, c.ImageRegistry); errors.As(err, &na) {
			out = append(out, fmt.Sprintf("adapter %q runs %s", t, imageOrigin(na.Image, d.RuntimeImage)))
		}
	}
	if len(out) > 0 {
		v.add("/imageAllowList", fmt.Sprintf("%s bounds every image a run can use, and matches no pattern for: %s. "+
			"Add a pattern that matches each (a '*' never crosses '/'), point imageRegistry at an allowed registry, "+
			"or change or disable those adapters", quoteList(c.ImageAllowList), strings.Join(out, "; ")))
	}
}

// imageOrigin names a resolved image and, when imageRegistry rewrote it,
// the runtimeImage it came from.
func imageOrigin(resolved, runtimeImage string) string {
	if resolved == runtimeImage {
		return strconv.Quote(resolved)
	}
	return fmt.Sprintf("%q (its runtimeImage %q under imageRegistry)", resolved, runtimeImage)
}

func (v *validation) checkAdapters() {
	c := &v.cfg
	raw, _ := v.m["adapters"].([]any)
	first := map[string]int{}
	anyEnabled := false
	for i, x := range raw {
		at := fmt.Sprintf("/adapters/%d", i)
		if v.bad(at) {
			continue
		}
		var e AdapterEntry
		if b, err := json.Marshal(x); err != nil || json.Unmarshal(b, &e) != nil {
			continue
		}
		if j, dup := first[e.AdapterType]; dup {
			v.add(at+"/adapterType", fmt.Sprintf("adapter %q is already defined at /adapters/%d: each adapterType may appear once", e.AdapterType, j))
			continue
		}
		first[e.AdapterType] = i
		if !e.IsEnabled() {
			continue
		}
		anyEnabled = true
		if strings.TrimSpace(e.RuntimeImage) == "" {
			v.add(at+"/runtimeImage", fmt.Sprintf("Adapter %q is missing required runtime field: runtimeImage: set the image, or enabled: false", e.AdapterType))
		} else if _, err := parseImageRef(e.RuntimeImage); err != nil {
			v.add(at+"/runtimeImage", shortQuote(e.RuntimeImage)+" "+err.Error())
		}
		for k, f := range e.AllowFqdns {
			if _, err := canonicalFqdn(f); err != nil {
				v.add(fmt.Sprintf("%s/allowFqdns/%d", at, k), shortQuote(f)+" "+err.Error())
			}
		}
		for k, name := range e.EnvKeys {
			if slices.Contains(ReservedEnvKeys, name) {
				v.add(fmt.Sprintf("%s/envKeys/%d", at, k), fmt.Sprintf("%q is reserved: the provider sets it", name))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(e.DefaultEnv)) {
			if slices.Contains(ReservedEnvKeys, name) {
				v.add(at+"/defaultEnv/"+jsonpointer.Escape(name), fmt.Sprintf("%q is reserved: the provider sets it", name))
			}
		}
	}
	if len(raw) > 0 && !anyEnabled && !v.bad("/adapters") {
		v.add("/adapters", "every adapter is disabled: enable one (enabled: true), or remove adapters to use the built-in adapters")
	}
	if v.bad("/adapters") || v.bad("/adapterType") {
		return
	}
	if _, explicit := v.input["adapterType"]; !explicit && len(c.Adapters) > 0 {
		avail := availableAdapters(c.Adapters)
		if !slices.Contains(avail, DefaultAdapterType) && len(avail) > 0 {
			for _, e := range c.Adapters {
				if e.IsEnabled() {
					c.AdapterType = e.AdapterType
					break
				}
			}
			v.m["adapterType"] = c.AdapterType
		}
	}
	d, err := Defaults(c.AdapterType, c.Adapters)
	if err == nil {
		v.adapter = &d
		return
	}
	at := c.AdapterType
	switch {
	case len(c.Adapters) == 0:
		v.add("/adapterType", fmt.Sprintf("%q is not a built-in adapter (%s): use one of them, or define it in adapters with its runtimeImage",
			at, strings.Join(BuiltinAdapterTypes(), ", ")))
	case slices.ContainsFunc(c.Adapters, func(e AdapterEntry) bool { return e.AdapterType == at && !e.IsEnabled() }):
		v.add("/adapterType", fmt.Sprintf("adapter %q is disabled in adapters (enabled: false): enable it or choose another adapterType", at))
	case slices.ContainsFunc(c.Adapters, func(e AdapterEntry) bool { return e.AdapterType == at }):
		// Its runtimeImage problem is reported at the entry.
	default:
		v.add("/adapterType", fmt.Sprintf("%q is not in adapters, which replaces the built-in adapters when set: add an entry for it to adapters, or use %s",
			at, orList(quoteAll(availableAdapters(c.Adapters)))))
	}
}

func (v *validation) checkResources() {
	type q struct {
		ptr string
		val string
		qty resource.Quantity
		ok  bool
	}
	parse := func(kind, res string) q {
		p := "/defaultResources/" + kind + "/" + res
		val, isStr := jsonpointer.Resolve(v.m, p).(string)
		x := q{ptr: p, val: val}
		if !isStr || v.bad(p) {
			return x
		}
		qty, err := resource.ParseQuantity(val)
		switch {
		case err != nil:
			v.add(p, shortQuote(val)+` is not a Kubernetes quantity: use e.g. "500m" or "2" for cpu and "512Mi" or "4Gi" for memory`)
		case qty.Sign() <= 0:
			v.add(p, "must be greater than zero")
		default:
			x.qty, x.ok = qty, true
		}
		return x
	}
	maxOf := func(res string) q {
		key := map[string]string{"cpu": "maxCpu", "memory": "maxMemory"}[res]
		p := "/tenantLimits/" + key
		val, isStr := jsonpointer.Resolve(v.m, p).(string)
		x := q{ptr: p, val: val}
		if !isStr || v.bad(p) {
			return x
		}
		qty, err := resource.ParseQuantity(val)
		if err != nil {
			v.add(p, shortQuote(val)+` is not a Kubernetes quantity: use e.g. "4" for cpu and "8Gi" for memory`)
			return x
		}
		// The LimitRange's default container limit must fit under its max,
		// or the API server refuses the LimitRange itself.
		if floor := resource.MustParse(limitRangeDefault[res]); qty.Cmp(floor) < 0 {
			v.add(p, fmt.Sprintf("%q%s is below %q, the tenant LimitRange's default container limit for %s (resources/limitrange.yaml): "+
				"the API server would refuse the LimitRange; use at least %q", val, v.defaultNote(p), limitRangeDefault[res], res, limitRangeDefault[res]))
			return x
		}
		x.qty, x.ok = qty, true
		return x
	}
	for _, res := range []string{"cpu", "memory"} {
		req, lim := parse("requests", res), parse("limits", res)
		if req.ok && lim.ok && req.qty.Cmp(lim.qty) > 0 {
			v.add(req.ptr, fmt.Sprintf("request %q%s is more than the limit %q%s at %s: lower the request or raise the limit",
				req.val, v.defaultNote(req.ptr), lim.val, v.defaultNote(lim.ptr), lim.ptr))
		}
		// What the API server enforces on every pod of the tenant: the
		// LimitRange's max, and the ResourceQuota's totals (a pod larger
		// than the whole quota can never start).
		if mx := maxOf(res); mx.ok {
			for _, x := range []q{lim, req} {
				if x.ok && x.qty.Cmp(mx.qty) > 0 {
					v.add(x.ptr, fmt.Sprintf("%q%s is more than the tenant LimitRange's maximum %q%s at %s: the API server would refuse every agent pod; "+
						"lower it, or raise %s", x.val, v.defaultNote(x.ptr), mx.val, v.defaultNote(mx.ptr), mx.ptr, mx.ptr))
				}
			}
		}
		for _, x := range []q{req, lim} {
			kind := strings.Split(x.ptr, "/")[2] // requests or limits
			key := kind + "." + res
			hard, isStr := jsonpointer.Resolve(v.m, "/resourceQuota/"+jsonpointer.Escape(key)).(string)
			if !x.ok || !isStr || v.bad("/resourceQuota") {
				continue
			}
			if h, err := resource.ParseQuantity(hard); err == nil && x.qty.Cmp(h) > 0 {
				v.add(x.ptr, fmt.Sprintf("%q%s is more than the tenant ResourceQuota's %s %q%s: no agent pod could ever start; lower it, or raise resourceQuota[%q]",
					x.val, v.defaultNote(x.ptr), key, hard, v.defaultNote("/resourceQuota"), key))
			}
		}
	}
}

// limitRangeDefault is the default container limit of the tenant LimitRange
// (spec.limits[0].default in resources/limitrange.yaml; a test keeps them
// equal): tenantLimits must not go below it.
var limitRangeDefault = map[string]string{"cpu": "1", "memory": "2Gi"}

// defaultNote is " (the default)" when ptr was not in the input.
func (v *validation) defaultNote(ptr string) string {
	if jsonpointer.Resolve(v.input, ptr) == nil {
		return " (the default)"
	}
	return ""
}

func toAnySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}
