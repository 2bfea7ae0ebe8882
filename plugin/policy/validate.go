package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
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

// optionalStrings are string fields without a default: a blank value means
// "unset".
var optionalStrings = []string{"kubeconfig", "companySlug", "imageRegistry", "runtimeClassName"}

const secretPointer = "/kubeconfig"

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
// backends lists the backends the plugin has loaded; an alias of a backend
// (WithBackendAliases) counts as its name on both sides. A nil or empty
// list skips the backend check.
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
	o := options{aliases: shippedAliases(), idlePods: shippedIdlePods()}
	for _, f := range opts {
		f(&o)
	}
	v.check(backends, o.aliases, o.idlePods)
	v.checkKubeconfig(o) // what the operator allows a kubeconfig (kubeconfig.go)
	v.warn()
	return v.cfg, v.m, v.scrubAll(v.warnings), v.finish()
}

// Option adjusts Validate and Parse.
type Option func(*options)

type options struct {
	getenv  func(string) string
	aliases map[string]string // backend alias → name
	// idlePods are the backends' backend.idlePods, name → config pointers.
	idlePods map[string][]string
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
	arr, ok := jsonpointer.Resolve(v.m, ptr).([]any)
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
