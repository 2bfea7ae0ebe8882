package resource

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// A template is a YAML tree. Strings may hold placeholders, each a plain
// path into the values (see path.go):
//
//	${a.b}          the value at a.b, with its type (a list stays a list)
//	${a.b?}         the same, but the field or list item disappears when
//	                the value is unset, null or empty
//	${a.b|string}   the value as a string (a port Cilium wants quoted)
//	"x-${a}"        placeholders inside text are interpolated (scalars only)
//
// and maps may be directives:
//
//	{$merge: [m1, m2]}                 shallow merge, later wins
//	{$if: [match...], then: X, else: Y} X when every match holds (the match
//	                                    objects of when and health.rules)
//	{$each: path, as: v, do: X}        one X per item; spliced into lists
//	{$use: fragment, with: {k: v}}     a fragment's template with k bound
//
// Nothing is built by joining YAML text.

var placeholder = regexp.MustCompile(`\$\{([^}]*)\}`)

type renderer struct {
	catalog *Catalog
	values  map[string]any
	vars    []map[string]any
	file    string
}

// splice is a list produced by $each, to be spread into the enclosing list.
type splice []any

// errAt names the data file and template location of a problem.
func (r *renderer) errAt(ptr, format string, args ...any) error {
	return &FileError{File: r.file, Pointer: ptr, Problem: fmt.Sprintf(format, args...)}
}

// lookup reads a plain path: its first key may name a variable ($each's
// as, $use's with), innermost first, else a top-level value.
func (r *renderer) lookup(path string) (any, bool) {
	keys := keysOf(path)
	if keys == nil {
		return nil, false
	}
	for i := len(r.vars) - 1; i >= 0; i-- {
		if v, ok := r.vars[i][keys[0]]; ok {
			return getPath(v, keys[1:])
		}
	}
	return getPath(r.values, keys)
}

func empty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case bool:
		return !x
	}
	return false
}

// render returns the rendered node and whether it is kept.
func (r *renderer) render(node any, ptr string) (any, bool, error) {
	switch v := node.(type) {
	case map[string]any:
		return r.renderMap(v, ptr)
	case []any:
		out := make([]any, 0, len(v))
		for i, item := range v {
			x, keep, err := r.render(item, fmt.Sprintf("%s/%d", ptr, i))
			if err != nil {
				return nil, false, err
			}
			if !keep {
				continue
			}
			if sp, ok := x.(splice); ok {
				out = append(out, sp...)
				continue
			}
			out = append(out, x)
		}
		return out, true, nil
	case string:
		return r.renderString(v, ptr)
	default:
		return v, true, nil
	}
}

func (r *renderer) renderMap(m map[string]any, ptr string) (any, bool, error) {
	switch {
	case m["$merge"] != nil:
		list, ok := m["$merge"].([]any)
		if !ok {
			return nil, false, r.errAt(ptr+"/$merge", "$merge takes a list of maps")
		}
		out := map[string]any{}
		for i, item := range list {
			x, keep, err := r.render(item, fmt.Sprintf("%s/$merge/%d", ptr, i))
			if err != nil {
				return nil, false, err
			}
			if !keep || x == nil {
				continue
			}
			xm, ok := x.(map[string]any)
			if !ok {
				return nil, false, r.errAt(fmt.Sprintf("%s/$merge/%d", ptr, i), "$merge item is a %T, not a map", x)
			}
			for k, val := range xm {
				out[k] = val
			}
		}
		return out, true, nil
	case m["$if"] != nil:
		ok, err := r.cond(m["$if"], ptr+"/$if")
		if err != nil {
			return nil, false, err
		}
		branch := "then"
		if !ok {
			branch = "else"
		}
		b, has := m[branch]
		if !has {
			return nil, false, nil
		}
		return r.render(b, ptr+"/"+branch)
	case m["$each"] != nil:
		path, _ := m["$each"].(string)
		as, _ := m["as"].(string)
		if path == "" || as == "" || m["do"] == nil {
			return nil, false, r.errAt(ptr, "$each needs a value path, as and do")
		}
		src, _ := r.lookup(path)
		if src == nil {
			return nil, false, nil
		}
		items, ok := src.([]any)
		if !ok {
			return nil, false, r.errAt(ptr+"/$each", "value %s is a %T, not a list", path, src)
		}
		if len(items) == 0 {
			return nil, false, nil
		}
		out := make(splice, 0, len(items))
		for _, it := range items {
			r.vars = append(r.vars, map[string]any{as: it})
			x, keep, err := r.render(m["do"], ptr+"/do")
			r.vars = r.vars[:len(r.vars)-1]
			if err != nil {
				return nil, false, err
			}
			if keep {
				out = append(out, x)
			}
		}
		return out, true, nil
	case m["$use"] != nil:
		name, _ := m["$use"].(string)
		frag, ok := r.catalog.Get(name)
		if !ok || frag.Use != UseFragment {
			return nil, false, r.errAt(ptr+"/$use", "%q is not a fragment", name)
		}
		bound := map[string]any{}
		if with, ok := m["with"].(map[string]any); ok {
			for k, x := range with {
				rx, keep, err := r.render(x, ptr+"/with/"+jsonpointer.Escape(k))
				if err != nil {
					return nil, false, err
				}
				if keep {
					bound[k] = rx
				}
			}
		}
		sub := &renderer{catalog: r.catalog, values: r.values, vars: append(append([]map[string]any{}, r.vars...), bound), file: frag.File}
		return sub.render(frag.Template, "/template")
	}
	out := make(map[string]any, len(m))
	for k, x := range m {
		rx, keep, err := r.render(x, ptr+"/"+jsonpointer.Escape(k))
		if err != nil {
			return nil, false, err
		}
		if !keep {
			continue
		}
		if sp, ok := rx.(splice); ok {
			rx = []any(sp)
		}
		out[k] = rx
	}
	return out, true, nil
}

// cond evaluates a $if list of match objects: all must hold.
func (r *renderer) cond(c any, ptr string) (bool, error) {
	list, ok := c.([]any)
	if !ok {
		return false, r.errAt(ptr, "$if takes a list of match objects ({path: ..., equals: ...})")
	}
	for i, item := range list {
		m, err := matchOf(item)
		if err != nil {
			return false, r.errAt(fmt.Sprintf("%s/%d", ptr, i), "%v", err)
		}
		ok, err := r.holds(m)
		if err != nil {
			return false, r.errAt(fmt.Sprintf("%s/%d", ptr, i), "%v", err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// holds evaluates a match object on the values.
func (r *renderer) holds(m Match) (bool, error) {
	v, found := r.lookup(m.Path)
	if !found {
		return m.eval(gjson.Result{})
	}
	b, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	return m.eval(gjson.ParseBytes(b))
}

// matchOf reads a match object written inside a template.
func matchOf(item any) (Match, error) {
	raw, ok := item.(map[string]any)
	if !ok {
		return Match{}, fmt.Errorf("a $if item is a match object ({path: ..., equals: ...}), not a %T", item)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return Match{}, err
	}
	var m Match
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Match{}, fmt.Errorf("not a match object: %v", err)
	}
	if m.Path == "" {
		return Match{}, fmt.Errorf("a match object needs a path")
	}
	return m, nil
}

func (r *renderer) renderString(s, ptr string) (any, bool, error) {
	locs := placeholder.FindAllStringSubmatchIndex(s, -1)
	if len(locs) == 0 {
		return s, true, nil
	}
	if len(locs) == 1 && locs[0][0] == 0 && locs[0][1] == len(s) {
		expr := s[locs[0][2]:locs[0][3]]
		path, optional, conv := parseExpr(expr)
		v, found := r.lookup(path)
		if !found || v == nil || (optional && empty(v)) {
			if optional {
				return nil, false, nil
			}
			return nil, false, r.errAt(ptr, "value %s is not set", path)
		}
		cv, err := convert(v, conv)
		if err != nil {
			return nil, false, r.errAt(ptr, "value %s: %v", path, err)
		}
		return cv, true, nil
	}
	var b strings.Builder
	last := 0
	for _, l := range locs {
		b.WriteString(s[last:l[0]])
		path, optional, _ := parseExpr(s[l[2]:l[3]])
		v, found := r.lookup(path)
		if !found || v == nil {
			if !optional {
				return nil, false, r.errAt(ptr, "value %s is not set", path)
			}
		} else {
			str, err := convert(v, "string")
			if err != nil {
				return nil, false, r.errAt(ptr, "value %s cannot be part of a string: %v", path, err)
			}
			b.WriteString(str.(string))
		}
		last = l[1]
	}
	b.WriteString(s[last:])
	return b.String(), true, nil
}

func parseExpr(expr string) (path string, optional bool, conv string) {
	path = strings.TrimSpace(expr)
	if i := strings.IndexByte(path, '|'); i >= 0 {
		conv = strings.TrimSpace(path[i+1:])
		path = strings.TrimSpace(path[:i])
	}
	if strings.HasSuffix(path, "?") {
		optional = true
		path = strings.TrimSuffix(path, "?")
	}
	return path, optional, conv
}

func convert(v any, conv string) (any, error) {
	switch conv {
	case "":
		return v, nil
	case "string":
		switch x := v.(type) {
		case string:
			return x, nil
		case int64:
			return strconv.FormatInt(x, 10), nil
		case float64:
			return strconv.FormatFloat(x, 'f', -1, 64), nil
		case bool:
			return strconv.FormatBool(x), nil
		}
		return nil, fmt.Errorf("a %T has no string form", v)
	}
	return nil, fmt.Errorf("unknown conversion %q (the one conversion is string)", conv)
}

// Render builds the object's manifest from the values. wanted is false when
// the resource's "when" conditions do not hold for these values.
func (s *Resource) Render(values map[string]any) (obj map[string]any, wanted bool, err error) {
	if s.Use == UseFragment || s.Template == nil {
		return nil, false, &FileError{File: s.File, Problem: "has no template to render"}
	}
	norm, err := Normalize(values)
	if err != nil {
		return nil, false, fmt.Errorf("%s: values: %w", s.File, err)
	}
	vm, _ := norm.(map[string]any)
	if wanted, err = s.wanted(vm); err != nil {
		return nil, false, err
	}
	r := &renderer{catalog: s.catalog, values: vm, file: s.File}
	out, _, err := r.render(s.Template, "/template")
	if err != nil {
		return nil, wanted, err
	}
	m := out.(map[string]any)
	if s.API != nil {
		m["kind"] = s.API.Kind
	}
	return m, wanted, nil
}

// Wanted reports whether the resource's "when" conditions hold for the values.
func (s *Resource) Wanted(values map[string]any) (bool, error) {
	if len(s.When) == 0 {
		return true, nil
	}
	norm, err := Normalize(values)
	if err != nil {
		return false, fmt.Errorf("%s: values: %w", s.File, err)
	}
	vm, _ := norm.(map[string]any)
	return s.wanted(vm)
}

func (s *Resource) wanted(vm map[string]any) (bool, error) {
	r := &renderer{values: vm, file: s.File}
	for i, m := range s.When {
		ok, err := r.holds(m)
		if err != nil {
			return false, &FileError{File: s.File, Pointer: fmt.Sprintf("/when/%d", i), Problem: err.Error()}
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// Normalize turns any JSON-able value into the plain form templates and
// unstructured objects use: maps, lists, strings, bools, int64 and float64.
func Normalize(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return decodeJSON(raw)
}

func decodeJSON(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return fixNumbers(v), nil
}

func fixNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = fixNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = fixNumbers(e)
		}
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		f, _ := x.Float64()
		return f
	}
	return v
}
