package resource

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// valuesSchema is schemas/values.schema.json: the values the files may
// read. Load checks every path into the values against it.
var valuesSchema = func() map[string]any {
	raw, err := schemas.FS.ReadFile("values.schema.json")
	if err != nil {
		panic(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		panic(fmt.Sprintf("values.schema.json: %v", err))
	}
	return m
}()

// valueChecker checks the paths of the files against the values schema.
type valueChecker struct {
	catalog *Catalog
	root    map[string]any
	errs    []error
	seen    map[string]bool
	user    string // the file being checked (a fragment is checked through it)
}

// binding is a name bound by $each (as) or $use (with), with the schema
// of its value (nil: unknown, anything goes).
type binding struct {
	name   string
	schema map[string]any
}

// checkValues checks every ${path}, $if, $each and when path of every file
// that renders (tenant, run and backend files; fragments in the scope of
// each file that uses them) against the values schema.
func (c *Catalog) checkValues() []error {
	v := &valueChecker{catalog: c, root: valuesSchema, seen: map[string]bool{}}
	for _, n := range c.order {
		s := c.specs[n]
		if s.Use == UseFragment || s.Use == UsePod {
			continue
		}
		v.user = s.File
		for i, m := range s.When {
			v.path(s.File, fmt.Sprintf("/when/%d/path", i), s.Use, nil, m.Path)
		}
		v.walk(s.File, "/template", s.Use, nil, s.Template)
	}
	return v.errs
}

func (v *valueChecker) fail(file, ptr, format string, args ...any) {
	e := &FileError{File: file, Pointer: ptr, Problem: fmt.Sprintf(format, args...)}
	if file != v.user {
		e.Problem += " (in the fragment as " + v.user + " uses it)"
	}
	if !v.seen[e.Error()] {
		v.seen[e.Error()] = true
		v.errs = append(v.errs, e)
	}
}

// walk follows the renderer (template.go): the same directives, in the
// same order of precedence.
func (v *valueChecker) walk(file, ptr string, scope Use, vars []binding, node any) {
	switch x := node.(type) {
	case []any:
		for i, item := range x {
			v.walk(file, fmt.Sprintf("%s/%d", ptr, i), scope, vars, item)
		}
	case string:
		locs := placeholder.FindAllStringSubmatchIndex(x, -1)
		whole := len(locs) == 1 && locs[0][0] == 0 && locs[0][1] == len(x)
		for _, loc := range locs {
			expr := x[loc[2]:loc[3]]
			path, _, conv := parseExpr(expr)
			if conv != "" && conv != "string" {
				v.fail(file, ptr, "${%s} converts with %q; the one conversion is string", expr, conv)
			}
			s := v.path(file, ptr, scope, vars, path)
			if t := jsonTypes(s); !whole && (slices.Contains(t, "object") || slices.Contains(t, "array")) {
				v.fail(file, ptr, "%s is %s and cannot be part of a string; make ${%s} the whole value", path, strings.Join(t, " or "), expr)
			}
		}
	case map[string]any:
		switch {
		case x["$merge"] != nil:
			v.walk(file, ptr+"/$merge", scope, vars, x["$merge"])
		case x["$if"] != nil:
			list, ok := x["$if"].([]any)
			if !ok {
				v.fail(file, ptr+"/$if", "$if takes a list of match objects ({path: ..., equals: ...})")
			}
			for i, item := range list {
				m, err := matchOf(item)
				if err != nil {
					v.fail(file, fmt.Sprintf("%s/$if/%d", ptr, i), "%v", err)
					continue
				}
				v.path(file, fmt.Sprintf("%s/$if/%d/path", ptr, i), scope, vars, m.Path)
			}
			for _, b := range []string{"then", "else"} {
				if n, ok := x[b]; ok {
					v.walk(file, ptr+"/"+b, scope, vars, n)
				}
			}
		case x["$each"] != nil:
			path, _ := x["$each"].(string)
			as, _ := x["as"].(string)
			if path == "" || as == "" || x["do"] == nil {
				v.fail(file, ptr, "$each needs a value path, as and do")
				return
			}
			list := v.path(file, ptr+"/$each", scope, vars, path)
			var item map[string]any
			if list != nil {
				if t := jsonTypes(list); len(t) > 0 && !slices.Contains(t, "array") {
					v.fail(file, ptr+"/$each", "%s is %s, not a list (schemas/values.schema.json)", path, strings.Join(t, " or "))
				}
				item, _ = list["items"].(map[string]any)
			}
			v.walk(file, ptr+"/do", scope, append(slices.Clone(vars), binding{as, v.deref(item)}), x["do"])
		case x["$use"] != nil:
			name, _ := x["$use"].(string)
			frag, ok := v.catalog.specs[name]
			if !ok || frag.Use != UseFragment {
				return // check reports it
			}
			inner := slices.Clone(vars)
			with, _ := x["with"].(map[string]any)
			for _, k := range sortedKeys(with) {
				v.walk(file, ptr+"/with/"+jsonpointer.Escape(k), scope, vars, with[k])
				var schema map[string]any
				if s, ok := with[k].(string); ok {
					if m := placeholder.FindStringSubmatchIndex(s); m != nil && m[0] == 0 && m[1] == len(s) {
						p, _, conv := parseExpr(s[m[2]:m[3]])
						if conv == "" {
							schema = v.resolve(scope, vars, p)
						}
					}
				}
				inner = append(inner, binding{k, schema})
			}
			v.walk(frag.File, "/template", scope, inner, frag.Template)
		default:
			for _, k := range sortedKeys(x) {
				v.walk(file, ptr+"/"+jsonpointer.Escape(k), scope, vars, x[k])
			}
		}
	}
}

// path checks one path into the values and returns the schema of its
// value (nil when unknown or wrong).
func (v *valueChecker) path(file, ptr string, scope Use, vars []binding, path string) map[string]any {
	keys, err := SplitPath(path)
	if err != nil {
		v.fail(file, ptr, "%v", err)
		return nil
	}
	for i := len(vars) - 1; i >= 0; i-- {
		if vars[i].name == keys[0] {
			if vars[i].schema == nil {
				return nil
			}
			return v.follow(file, ptr, path, keys[:1], keys[1:], vars[i].schema)
		}
	}
	props, _ := v.root["properties"].(map[string]any)
	top, ok := props[keys[0]].(map[string]any)
	if !ok {
		v.fail(file, ptr, "%s: the values have no %q (they are %s; schemas/values.schema.json)", path, keys[0], strings.Join(sortedKeys(props), ", "))
		return nil
	}
	if scopes := stringList(top["x-scopes"]); len(scopes) > 0 && !slices.Contains(scopes, string(scope)) {
		v.fail(file, ptr, "%s: %s is set for %s files only, and this is read by a %s file (schemas/values.schema.json)", path, keys[0], strings.Join(scopes, " and "), scope)
		return nil
	}
	return v.follow(file, ptr, path, keys[:1], keys[1:], top)
}

// resolve is path without reporting: the schema of a path's value.
func (v *valueChecker) resolve(scope Use, vars []binding, path string) map[string]any {
	quiet := &valueChecker{catalog: v.catalog, root: v.root, seen: map[string]bool{}}
	return quiet.path("", "", scope, vars, path)
}

// follow walks the rest of a path's keys through the schema.
func (v *valueChecker) follow(file, ptr, path string, done, keys []string, schema map[string]any) map[string]any {
	s := v.deref(schema)
	for _, k := range keys {
		if props, ok := s["properties"].(map[string]any); ok {
			if next, ok := props[k].(map[string]any); ok {
				done, s = append(done, k), v.deref(next)
				continue
			}
		}
		if ap, ok := s["additionalProperties"].(map[string]any); ok {
			done, s = append(done, k), v.deref(ap)
			continue
		}
		if items, ok := s["items"].(map[string]any); ok {
			if _, err := strconv.Atoi(k); err == nil {
				done, s = append(done, k), v.deref(items)
				continue
			}
		}
		at := strings.Join(done, ".")
		if s["additionalProperties"] == false {
			props, _ := s["properties"].(map[string]any)
			v.fail(file, ptr, "%s: %s has no %q (it has %s; schemas/values.schema.json)", path, at, k, strings.Join(sortedKeys(props), ", "))
			return nil
		}
		if t := jsonTypes(s); len(t) > 0 && !slices.Contains(t, "object") && !slices.Contains(t, "array") {
			v.fail(file, ptr, "%s: %s is %s and has no %q (schemas/values.schema.json)", path, at, strings.Join(t, " or "), k)
			return nil
		}
		return nil // an open object: anything below it is unknown
	}
	return s
}

func (v *valueChecker) deref(s map[string]any) map[string]any {
	for s != nil {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s
		}
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		if !ok {
			return nil
		}
		defs, _ := v.root["$defs"].(map[string]any)
		s, _ = defs[name].(map[string]any)
	}
	return s
}

// jsonTypes lists a schema's JSON types ("null" left out).
func jsonTypes(s map[string]any) []string {
	var out []string
	switch t := s["type"].(type) {
	case string:
		out = []string{t}
	case []any:
		out = stringList(t)
	}
	if _, ok := s["enum"]; ok && len(out) == 0 {
		out = []string{"string"}
	}
	return slices.DeleteFunc(out, func(t string) bool { return t == "null" })
}

func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
