package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v5"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// Schema-error translation: the validator's errors on the config become
// FieldErrors that name the field and say what to write instead (the
// per-field hints are the schema's own x-hint annotations, see hints.go).

// compiledSchema is schemas/config.schema.json, compiled and decoded.
type compiledSchema struct {
	schema *jsonschema.Schema
	doc    map[string]any
	props  map[string]any
}

// loadSchema reads config.schema.json as written, with its x- annotations
// (schemas.ConfigSchema is the manifest's copy, without them).
var loadSchema = sync.OnceValues(func() (*compiledSchema, error) {
	src, err := schemas.FS.ReadFile("config.schema.json")
	if err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	const url = "config.schema.json"
	if err := c.AddResource(url, bytes.NewReader(src)); err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	if err := checkHints(doc); err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	props, _ := doc["properties"].(map[string]any)
	return &compiledSchema{schema: s, doc: doc, props: props}, nil
})

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
	kw := jsonpointer.Last(e.KeywordLocation)
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
	ptr := jsonpointer.FromSchemaLocation(e.InstanceLocation)
	_, frag, _ := strings.Cut(e.AbsoluteKeywordLocation, "#")
	parent := jsonpointer.FromSchemaLocation(frag[:max(strings.LastIndex(frag, "/"), 0)])
	node, _ := jsonpointer.Resolve(v.cs.doc, parent).(map[string]any)
	val := jsonpointer.Resolve(v.m, ptr)
	switch kw {
	case "anyOf", "oneOf":
		if ptr == "" {
			v.add("", authMessage)
			return
		}
	case "required":
		obj, _ := val.(map[string]any)
		props, _ := node["properties"].(map[string]any)
		for _, r := range toStrings(node["required"]) {
			if _, ok := obj[r]; !ok {
				prop, _ := props[r].(map[string]any)
				v.add(ptr+"/"+jsonpointer.Escape(r), withHint("is required", hint(prop, "required")))
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
			v.add(ptr+"/"+jsonpointer.Escape(k), msg+"; allowed fields: "+strings.Join(allowed, ", "))
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
			n = len([]rune(jsonpointer.Last(ptr)))
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
		v.add(ptr, withHint(msg, hint(node, "minProperties")))
		return
	}
	msg := e.Message
	if strings.HasPrefix(ptr, secretPointer) {
		msg = "is not valid"
	}
	v.add(ptr, msg)
}

// patternMessage explains a pattern failure at ptr; parent is the schema
// location of the failing subschema (a propertyNames schema checks the key
// that ends ptr).
func (v *validation) patternMessage(parent, ptr string, val any) string {
	if strings.HasSuffix(parent, "/propertyNames") {
		key := jsonpointer.Last(ptr)
		return fmt.Sprintf("key %s %s", shortQuote(key), patternHint(parent, key))
	}
	s, _ := val.(string)
	return v.quote(ptr, val) + " " + patternHint(parent, s)
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
