package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/url"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v5"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// FieldError is one problem of a config: Pointer is the JSON pointer of the
// offending value ("" for the config as a whole, "/egressAllowCidrs/2" for
// an item) and Message says what is wrong and what to do.
type FieldError struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

// Error returns "<pointer>: <message>", or the message for the root.
func (e FieldError) Error() string {
	if e.Pointer == "" {
		return e.Message
	}
	return e.Pointer + ": " + e.Message
}

// FieldErrors is a list of FieldError usable as one error.
type FieldErrors []FieldError

// Error joins the errors with "; ".
func (es FieldErrors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

// Strings returns each error's Error() (the shape of the host's
// validation result `errors`).
func (es FieldErrors) Strings() []string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return s
}

// HostOwnedKeys are config keys the Paperclip host may put in a provider
// config. They are kept as they are and never warned about.
var HostOwnedKeys = []string{
	"timeoutMs", "reuseLease", "runnerLifecycleMode", "runnerIdleTimeoutMs", "archiveOnRelease",
	"sandboxName", "workspaceRealization", "agentId", "provider", "streamRunLogs", "driver",
	"executionWorkspaceMode", "pluginId", "pluginKey", "providerMetadata", "remoteCwd",
	"shellCommand", "sandboxProviderPlugin", "sandboxLeaseAcquisition", "nativeHarnessBackup",
	"nativeWorkspaceSync",
}

// legacyKeys are keys of other versions of the reference plugin.
var legacyKeys = map[string]string{
	"runtimeImage":               "set the image of each adapter with adapters[].runtimeImage",
	"runtimeImages":              "set the image of each adapter with adapters[].runtimeImage",
	"paperclipServerPodSelector": "use paperclipServerPodLabels",
	"serverPodAppLabel":          "use paperclipServerPodLabels",
	"kubeconfigSecretRef":        "use kubeconfig (a secret reference)",
	"egressPolicy":               "egress is always allow-listed; see egressMode, egressAllowFqdns and egressAllowCidrs",
	"agentApiAccess":             "agent pods get no Kubernetes API access",
}

// ReservedEnvKeys may not be set by adapters: the provider sets them.
var ReservedEnvKeys = []string{"BOOTSTRAP_TOKEN", EnvEgressPolicy, EnvEgressGrantPath, EnvEgressAllowFqdns, EnvEgressAllowCidrs}

// optionalStrings are string fields without a default: a blank value means
// "unset".
var optionalStrings = []string{"kubeconfig", "companySlug", "imageRegistry", "runtimeClassName"}

const secretPointer = "/kubeconfig"

type compiledSchema struct {
	schema *jsonschema.Schema
	doc    map[string]any
	props  map[string]any
}

var loadSchema = sync.OnceValues(func() (*compiledSchema, error) {
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(schemas.ConfigSchema))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	const url = "config.schema.json"
	if err := c.AddResource(url, bytes.NewReader(schemas.ConfigSchema)); err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	props, _ := doc["properties"].(map[string]any)
	return &compiledSchema{schema: s, doc: doc, props: props}, nil
})

// Parse is Validate for callers that only need the Config: it returns the
// errors as FieldErrors.
func Parse(raw any, backends []string, opts ...Option) (Config, error) {
	cfg, _, _, errs := Validate(raw, backends, opts...)
	if len(errs) > 0 {
		return cfg, FieldErrors(errs)
	}
	return cfg, nil
}

// Validate checks a provider config (a map[string]any, json.RawMessage,
// []byte, or anything that marshals to a JSON object) and returns:
//
//   - the typed Config (complete only when errs is empty),
//   - normalized: the input with every default applied, values put in
//     canonical form (CIDRs, host names, workspacePath, backend alias, a
//     trailing '/' of imageRegistry) and unknown keys — the host's own among
//     them — kept as they are; null and, for kubeconfig, companySlug,
//     imageRegistry and runtimeClassName, blank values count as unset,
//   - warnings (the reference's standard-mode egress warnings, ignored and
//     misspelt keys, legacy names),
//   - every error found, each with the JSON pointer of its value, sorted by
//     pointer: first the schema (schemas/config.schema.json), then the rules
//     that span fields or need real parsing (namespace length, CIDRs,
//     registry, adapterType against built-ins or adapters, backend).
//
// backends lists the backends the plugin has loaded; "sandbox-cr" counts as
// "sandbox" on both sides. A nil or empty list skips the backend check.
//
// The kubeconfig value never appears in an error or a warning.
func Validate(raw any, backends []string, opts ...Option) (cfg Config, normalized map[string]any, warnings []string, errs []FieldError) {
	cs, err := loadSchema()
	if err != nil {
		return Config{}, nil, nil, []FieldError{{Message: "internal error: " + err.Error()}}
	}
	in, ferr := toObject(raw)
	if ferr != nil {
		return Config{}, nil, nil, []FieldError{*ferr}
	}
	v := &validation{cs: cs, m: in, errAt: map[string]bool{}}
	if s, ok := in["kubeconfig"].(string); ok {
		v.secret = strings.TrimSpace(s)
	}
	v.clean()
	v.input = deepCopy(v.m).(map[string]any)
	v.schemaCheck()
	applyDefaults(cs.doc, v.m)
	v.canonicalIntegers()
	v.cfg = v.decode()
	v.check(backends)
	v.checkKubeconfig(opts) // what the operator allows a kubeconfig (kubeconfig.go)
	v.warn()
	return v.cfg, v.m, v.scrubAll(v.warnings), v.finish()
}

type validation struct {
	cs       *compiledSchema
	m        map[string]any // becomes normalized
	input    map[string]any // cleaned input, before defaults
	secret   string
	cfg      Config
	errs     []FieldError
	errAt    map[string]bool
	warnings []string
	adapter  *AdapterDefaults // defaults of cfg.AdapterType when it resolved
}

func toObject(raw any) (map[string]any, *FieldError) {
	var data []byte
	switch r := raw.(type) {
	case nil:
		return map[string]any{}, nil
	case json.RawMessage:
		data = r
	case []byte:
		data = r
	default:
		b, err := json.Marshal(r)
		if err != nil {
			return nil, &FieldError{Message: "config cannot be encoded as JSON: " + err.Error()}
		}
		data = b
	}
	if len(bytes.TrimSpace(data)) == 0 || bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, &FieldError{Message: "config is not valid JSON: " + err.Error()}
	}
	m, ok := x.(map[string]any)
	if !ok {
		return nil, &FieldError{Message: "config must be a JSON object, not " + jsonType(x)}
	}
	return m, nil
}

// clean drops null values of our keys and blank optional strings.
func (v *validation) clean() {
	for k := range v.cs.props {
		if x, ok := v.m[k]; ok && x == nil {
			delete(v.m, k)
		}
	}
	for _, k := range optionalStrings {
		if s, ok := v.m[k].(string); ok && strings.TrimSpace(s) == "" {
			delete(v.m, k)
		}
	}
}

func (v *validation) add(ptr, msg string) {
	if v.errAt[ptr] {
		return
	}
	v.errAt[ptr] = true
	v.errs = append(v.errs, FieldError{Pointer: ptr, Message: msg})
}

// stringItems returns the string items of the array at a top-level pointer
// of normalized that have no error yet; ok is false when there is no array.
func (v *validation) stringItems(ptr string) (items []indexedString, ok bool) {
	arr, ok := resolve(v.m, ptr).([]any)
	if !ok {
		return nil, false
	}
	for i, x := range arr {
		if s, isStr := x.(string); isStr && !v.bad(fmt.Sprintf("%s/%d", ptr, i)) {
			items = append(items, indexedString{i, s})
		}
	}
	return items, true
}

// bad reports whether there is an error at ptr or below it.
func (v *validation) bad(ptr string) bool {
	for p := range v.errAt {
		if p == ptr || strings.HasPrefix(p, ptr+"/") {
			return true
		}
	}
	return false
}

func (v *validation) schemaCheck() {
	err := v.cs.schema.Validate(v.m)
	if err == nil {
		return
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		v.add("", "config could not be validated: "+err.Error())
		return
	}
	v.walk(ve)
}

func (v *validation) walk(e *jsonschema.ValidationError) {
	kw := lastSegment(e.KeywordLocation)
	if len(e.Causes) == 0 || kw == "anyOf" || kw == "oneOf" {
		v.leaf(e, kw)
		return
	}
	for _, c := range e.Causes {
		v.walk(c)
	}
}

const authMessage = `set inCluster: true to use the service account of the pod Paperclip runs in, or set kubeconfig to a secret holding a kubeconfig (kubernetes provider requires one of "inCluster" or "kubeconfig")`

func (v *validation) leaf(e *jsonschema.ValidationError, kw string) {
	ptr := fromV5Pointer(e.InstanceLocation)
	_, frag, _ := strings.Cut(e.AbsoluteKeywordLocation, "#")
	parent := frag[:max(strings.LastIndex(frag, "/"), 0)]
	node, _ := resolve(v.cs.doc, parent).(map[string]any)
	val := resolve(v.m, ptr)
	switch kw {
	case "anyOf", "oneOf":
		if ptr == "" {
			v.add("", authMessage)
			return
		}
	case "required":
		obj, _ := val.(map[string]any)
		for _, r := range toStrings(node["required"]) {
			if _, ok := obj[r]; !ok {
				v.add(ptr+"/"+escape(r), "is required"+requiredHint(r))
			}
		}
		return
	case "additionalProperties":
		obj, _ := val.(map[string]any)
		props, _ := node["properties"].(map[string]any)
		allowed := slices.Sorted(maps.Keys(props))
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if _, ok := props[k]; ok {
				continue
			}
			msg := fmt.Sprintf("unknown field %q", k)
			if s := closest(k, allowed); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			v.add(ptr+"/"+escape(k), msg+"; allowed fields: "+strings.Join(allowed, ", "))
		}
		return
	case "type":
		want := toStrings(node["type"])
		if len(want) == 0 {
			if s, ok := node["type"].(string); ok {
				want = []string{s}
			}
		}
		got := article(jsonType(val))
		if slices.Contains(want, "integer") && jsonType(val) == "number" {
			got = v.quote(ptr, val)
		}
		v.add(ptr, fmt.Sprintf("must be %s, not %s", article(strings.Join(want, " or ")), got))
		return
	case "enum":
		var opts []string
		for _, o := range asSlice(node["enum"]) {
			opts = append(opts, fmt.Sprintf("%q", fmt.Sprint(o)))
		}
		v.add(ptr, fmt.Sprintf("%s is not allowed: use %s", v.quote(ptr, val), orList(opts)))
		return
	case "pattern":
		v.add(ptr, v.patternMessage(parent, ptr, val))
		return
	case "minLength":
		if s, _ := val.(string); s == "" {
			v.add(ptr, "must not be empty")
		} else {
			v.add(ptr, fmt.Sprintf("must be at least %v characters long", node["minLength"]))
		}
		return
	case "maxLength":
		n := 0
		if s, ok := val.(string); ok {
			n = len([]rune(s))
		} else if strings.Contains(e.KeywordLocation, "/propertyNames/") {
			n = len([]rune(unescape(lastSegment(ptr))))
		}
		what := "must be"
		if strings.Contains(e.KeywordLocation, "/propertyNames/") {
			what = "key must be"
		}
		v.add(ptr, fmt.Sprintf("%s at most %v characters long, not %d", what, node["maxLength"], n))
		return
	case "minimum":
		v.add(ptr, fmt.Sprintf("must be at least %v, not %v", node["minimum"], val))
		return
	case "maximum":
		v.add(ptr, fmt.Sprintf("must be at most %v, not %v", node["maximum"], val))
		return
	case "exclusiveMinimum":
		v.add(ptr, fmt.Sprintf("must be greater than %v, not %v", node["exclusiveMinimum"], val))
		return
	case "minProperties":
		msg := fmt.Sprintf("must have at least %v entries", node["minProperties"])
		if fmt.Sprint(node["minProperties"]) == "1" {
			msg = "must not be empty"
		}
		if ptr == "/paperclipServerPodLabels" {
			msg += `: give the labels of the Paperclip server pods, e.g. {"app": "paperclip-server"}`
		}
		v.add(ptr, msg)
		return
	}
	msg := e.Message
	if strings.HasPrefix(ptr, secretPointer) {
		msg = "is not valid"
	}
	v.add(ptr, msg)
}

func requiredHint(field string) string {
	switch field {
	case "adapterType":
		return `: name the adapter, e.g. "my_agent"`
	}
	return ""
}

// patternMessage explains a pattern failure at ptr; parent is the schema
// location of the failing subschema.
func (v *validation) patternMessage(parent, ptr string, val any) string {
	if strings.HasSuffix(parent, "/propertyNames") {
		key := unescape(lastSegment(ptr))
		return fmt.Sprintf("key %s %s", shortQuote(key), patternHint(parent, key))
	}
	s, _ := val.(string)
	return v.quote(ptr, val) + " " + patternHint(parent, s)
}

// patternHint says why s does not match the pattern of the schema at parent
// and what to write instead. Every pattern in the schema has a case here.
func patternHint(parent, s string) string {
	switch {
	case strings.HasSuffix(parent, "/defaultEnv/propertyNames"), strings.HasSuffix(parent, "/envKeys/items"):
		return "is not a valid environment variable name: use letters, digits and '_', not starting with a digit"
	case strings.HasSuffix(parent, "/propertyNames"):
		return "is not a valid label or annotation key: [prefix/]name, where name is at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, and the optional prefix is a DNS subdomain, e.g. \"example.com/pool\""
	case strings.HasSuffix(parent, "/additionalProperties"):
		return "is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
	}
	switch field := schemaField(parent); field {
	case "namespacePrefix":
		return `is not a valid namespacePrefix: use lowercase letters, digits and '-', starting with a letter or digit, e.g. "paperclip-"`
	case "companySlug":
		return `is not a valid companySlug: use lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. "acme"`
	case "imageRegistry":
		if msg := registryProblem(s); msg != "" {
			return msg
		}
		return "must be a bare registry host[:port][/path], e.g. registry.example.com:5000/mirror"
	case "imagePullSecrets", "runtimeClassName":
		return "is not a valid Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	case "egressAllowFqdns", "allowFqdns":
		if _, err := canonicalFqdn(s); err != nil {
			return err.Error()
		}
		return "is not a valid host name, e.g. api.example.com"
	case "egressAllowCidrs":
		if _, err := ParseCIDR(s); err != nil {
			return err.Error()
		}
		return "is not a CIDR: write address/prefix-length, e.g. 10.20.0.0/16 or 2001:db8::/48"
	case "paperclipServerNamespace":
		return "is not a valid namespace name: lowercase letters, digits and '-', starting and ending with a letter or digit"
	case "workspacePath":
		return `is not an absolute path: start it with '/', e.g. "/workspace" (no control characters)`
	case "backend":
		return `is not a backend name: use "sandbox" or "job"`
	case "adapterType":
		return `is not a valid adapter name: letters, digits, '_', '.' and '-', starting with a letter or digit, e.g. "claude_local"`
	case "runtimeImage":
		return "is not a valid image reference: no spaces, e.g. ghcr.io/acme/agent:1.2.0"
	case "cpu", "memory":
		return `is not a Kubernetes quantity: use e.g. "500m" or "2" for cpu and "512Mi" or "4Gi" for memory`
	case "maxCpu", "maxMemory":
		return `is not a Kubernetes quantity: use e.g. "4" for cpu and "8Gi" for memory`
	}
	return "has an invalid format"
}

// schemaField returns the property name a schema location describes:
// "/properties/adapters/items/properties/envKeys/items" gives "envKeys".
func schemaField(loc string) string {
	loc = strings.TrimSuffix(loc, "/items")
	i := strings.LastIndex(loc, "/properties/")
	if i < 0 {
		return ""
	}
	return unescape(loc[i+len("/properties/"):])
}

// quote renders a value for a message: short single-line strings quoted,
// others described; the kubeconfig is never rendered.
func (v *validation) quote(ptr string, val any) string {
	if ptr == secretPointer || strings.HasPrefix(ptr, secretPointer+"/") {
		return "the value"
	}
	if s, ok := val.(string); ok {
		return shortQuote(s)
	}
	b, err := json.Marshal(val)
	if err != nil || len(b) > 80 {
		return "the value"
	}
	return string(b)
}

// shortQuote quotes s when it is one short line; longer or multi-line
// values (which may be pasted secrets) are only described.
func shortQuote(s string) string {
	if len(s) > 100 || strings.ContainsAny(s, "\r\n") {
		return fmt.Sprintf("the value (%d characters)", len(s))
	}
	return strconv.Quote(s)
}

// applyDefaults fills absent properties from the schema's defaults, deeply
// (into present objects and into array items).
func applyDefaults(schema map[string]any, inst any) {
	switch x := inst.(type) {
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		for k, ps := range props {
			sub, _ := ps.(map[string]any)
			if _, ok := x[k]; !ok {
				if d, ok := sub["default"]; ok {
					x[k] = deepCopy(d)
				}
			}
			if val, ok := x[k]; ok {
				applyDefaults(sub, val)
			}
		}
	case []any:
		items, _ := schema["items"].(map[string]any)
		if items == nil {
			return
		}
		for _, it := range x {
			applyDefaults(items, it)
		}
	}
}

// canonicalIntegers rewrites integer-typed top-level values such as 1e9 or
// 3100.0 as plain integers.
func (v *validation) canonicalIntegers() {
	for k, ps := range v.cs.props {
		sub, _ := ps.(map[string]any)
		if sub["type"] != "integer" {
			continue
		}
		n, ok := v.m[k].(json.Number)
		if !ok {
			continue
		}
		r, ok := new(big.Rat).SetString(string(n))
		if ok && r.IsInt() {
			v.m[k] = json.Number(r.Num().String())
		}
	}
}

// decode builds the typed Config from normalized, with values that failed
// the schema replaced by their defaults.
func (v *validation) decode() Config {
	m := deepCopy(v.m).(map[string]any)
	for k := range m {
		if _, ours := v.cs.props[k]; !ours {
			delete(m, k)
			continue
		}
		if v.bad("/" + escape(k)) {
			delete(m, k)
			sub, _ := v.cs.props[k].(map[string]any)
			if d, ok := sub["default"]; ok {
				m[k] = deepCopy(d)
			}
		}
	}
	var cfg Config
	b, err := json.Marshal(m)
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		v.add("", "internal error: config does not decode: "+err.Error())
	}
	return cfg
}

func (v *validation) check(backends []string) {
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

	// Backend.
	if !v.bad("/backend") {
		if canon := CanonicalBackend(c.Backend); canon != c.Backend {
			v.warnings = append(v.warnings, fmt.Sprintf("backend %q is the legacy name of %q; it is saved as %q", c.Backend, canon, canon))
			c.Backend = canon
			v.m["backend"] = canon
		}
		if len(backends) > 0 {
			known := make([]string, 0, len(backends))
			for _, b := range backends {
				if b = CanonicalBackend(b); !slices.Contains(known, b) {
					known = append(known, b)
				}
			}
			sort.Strings(known)
			if !slices.Contains(known, c.Backend) {
				v.add("/backend", fmt.Sprintf("%q is not an available backend: use %s", c.Backend, orList(quoteAll(known))))
			}
		}
	}

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
				v.add(at+"/defaultEnv/"+escape(name), fmt.Sprintf("%q is reserved: the provider sets it", name))
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
		val, isStr := resolve(v.m, p).(string)
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
		val, isStr := resolve(v.m, p).(string)
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
			hard, isStr := resolve(v.m, "/resourceQuota/"+escape(key)).(string)
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
	if resolve(v.input, ptr) == nil {
		return " (the default)"
	}
	return ""
}

func (v *validation) warn() {
	c := v.cfg
	hostOwned := map[string]bool{}
	for _, k := range HostOwnedKeys {
		hostOwned[k] = true
	}
	known := slices.Sorted(maps.Keys(v.cs.props))
	for _, k := range slices.Sorted(maps.Keys(v.input)) {
		if _, ours := v.cs.props[k]; ours || hostOwned[k] {
			continue
		}
		if hint, ok := legacyKeys[k]; ok {
			v.warnings = append(v.warnings, fmt.Sprintf("key %q is not supported and is ignored: %s", k, hint))
		} else if s := closest(k, known); s != "" {
			v.warnings = append(v.warnings, fmt.Sprintf("unknown key %q is ignored; did you mean %q?", k, s))
		}
	}
	if c.InCluster && v.secret != "" && !v.bad("/kubeconfig") {
		v.warnings = append(v.warnings, "inCluster is true, so kubeconfig is ignored")
	}
	if c.ImageRegistry != "" && !v.bad("/imageRegistry") && registryIsDockerHubNamespace(c.ImageRegistry) {
		first, _, _ := strings.Cut(c.ImageRegistry, "/")
		v.warnings = append(v.warnings, fmt.Sprintf("imageRegistry %q has no '.' or ':' in %q, so container runtimes read it as a Docker Hub namespace (docker.io/%s/…); write docker.io/%s if that is meant, or the registry's full host name",
			c.ImageRegistry, first, c.ImageRegistry, c.ImageRegistry))
	}
	if !v.bad("/egressAllowCidrs") {
		for i, s := range c.EgressAllowCidrs {
			if strings.HasSuffix(s, "/0") {
				v.warnings = append(v.warnings, fmt.Sprintf("egressAllowCidrs[%d] %s allows every destination of its address family on any port, including cluster-internal addresses and cloud metadata endpoints", i, s))
			}
		}
	}
	if c.EgressMode == EgressModeStandard && v.adapter != nil && !v.bad("/egressAllowFqdns") && !v.bad("/egressAllowCidrs") {
		fqdns := canonicalFqdns(append(append([]string{}, v.adapter.AllowFqdns...), c.EgressAllowFqdns...))
		if len(fqdns) > 0 {
			list := strings.Join(fqdns, ", ")
			if len(c.EgressAllowCidrs) == 0 {
				v.warnings = append(v.warnings, fmt.Sprintf(`egressMode=standard cannot enforce FQDN-based egress rules for %s. Agent pods will get public IPv4 egress on TCP 80 and 443, with private, link-local, loopback and multicast ranges excluded. Switch egressMode to "cilium" for exact FQDN enforcement, or set egressAllowCidrs to the ranges these hosts use.`, list))
			} else {
				v.warnings = append(v.warnings, fmt.Sprintf(`egressMode=standard cannot enforce FQDN-based egress rules for %s. Agent pods can reach only the egressAllowCidrs ranges (%s), so these hosts work only if they resolve into them. Switch egressMode to "cilium" for exact FQDN enforcement.`, list, strings.Join(c.EgressAllowCidrs, ", ")))
			}
		}
	}
}

// finish sorts the errors by pointer and scrubs the secret from them.
func (v *validation) finish() []FieldError {
	sort.SliceStable(v.errs, func(i, j int) bool { return pointerLess(v.errs[i].Pointer, v.errs[j].Pointer) })
	for i := range v.errs {
		v.errs[i].Message = v.scrub(v.errs[i].Message)
		v.errs[i].Pointer = v.scrub(v.errs[i].Pointer)
	}
	if len(v.errs) == 0 {
		return nil
	}
	return v.errs
}

func (v *validation) scrubAll(ss []string) []string {
	for i := range ss {
		ss[i] = v.scrub(ss[i])
	}
	return ss
}

// scrub removes the kubeconfig value (and each of its longer lines) from a
// message, in case a user pasted it into another field.
func (v *validation) scrub(s string) string {
	if len(v.secret) < 6 {
		return s
	}
	s = strings.ReplaceAll(s, v.secret, redacted)
	for _, line := range strings.Split(v.secret, "\n") {
		if line = strings.TrimSpace(line); len(line) >= 16 {
			s = strings.ReplaceAll(s, line, redacted)
		}
	}
	return s
}

// pointerLess orders JSON pointers segment by segment, numbers numerically.
func pointerLess(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		ai, aerr := strconv.Atoi(as[i])
		bi, berr := strconv.Atoi(bs[i])
		if aerr == nil && berr == nil {
			return ai < bi
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

// resolve returns the value at a JSON pointer (nil when absent).
func resolve(doc any, ptr string) any {
	if ptr == "" {
		return doc
	}
	cur := doc
	for _, seg := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		seg = unescape(seg)
		switch x := cur.(type) {
		case map[string]any:
			cur = x[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			cur = x[i]
		default:
			return nil
		}
	}
	return cur
}

// fromV5Pointer turns a jsonschema/v5 location, whose segments are also
// URL-path-escaped, into a plain RFC 6901 pointer.
func fromV5Pointer(p string) string {
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if u, err := url.PathUnescape(seg); err == nil {
			segs[i] = u
		}
	}
	return strings.Join(segs, "/")
}

func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func unescape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

func lastSegment(ptr string) string {
	return ptr[strings.LastIndex(ptr, "/")+1:]
}

func jsonType(x any) string {
	switch n := x.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		if r, ok := new(big.Rat).SetString(string(n)); ok && r.IsInt() {
			return "integer"
		}
		return "number"
	case float64:
		if n == float64(int64(n)) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", x)
}

func article(t string) string {
	switch t {
	case "null":
		return "null"
	case "integer", "array", "object", "integer or string":
		return "an " + t
	}
	return "a " + t
}

func orList(items []string) string {
	switch len(items) {
	case 0:
		return "nothing"
	case 1:
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

func asSlice(x any) []any {
	s, _ := x.([]any)
	return s
}

func toStrings(x any) []string {
	var out []string
	for _, e := range asSlice(x) {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
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

func deepCopy(x any) any {
	switch v := x.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = deepCopy(e)
		}
		return s
	}
	return x
}

// closest returns the candidate that s most likely misspells, or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	ls := strings.ToLower(s)
	for _, c := range candidates {
		d := levenshtein(ls, strings.ToLower(c))
		limit := 2
		if len(c) >= 10 {
			limit = 3
		}
		if d <= limit && d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
