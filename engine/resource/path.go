package resource

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Every path in a data file is a gjson path (github.com/tidwall/gjson,
// SYNTAX.md): keys separated by ".", a list item by its index, "\" before
// a character that would otherwise be special (labels.paperclip\.io/role).
//
// Paths read from Kubernetes objects (health rules: match, reasonFrom,
// messageFrom; pods.find) may use all of gjson: queries
// (#(type=="Ready")), wildcards, modifiers and pipes. Paths into the values
// (${path}, $if, $each, when) and paths the provider writes or names
// (backend.deadlinePath, backend.podSpecPath) are plain: keys and indexes
// only, which Load checks. A plain path means the same here as in gjson.

// plainPathSpecial are the characters that make a gjson path more than a
// plain path when they are not escaped.
const plainPathSpecial = "*?#|@!=<>%()[]{}"

// SplitPath splits a plain gjson path into its keys (the path language is
// described above).
func SplitPath(p string) ([]string, error) {
	if p == "" {
		return nil, fmt.Errorf("the path is empty")
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			if i+1 == len(p) {
				return nil, fmt.Errorf("path %q ends with a lone \\", p)
			}
			i++
			cur.WriteByte(p[i])
		case c == '.':
			if cur.Len() == 0 {
				return nil, fmt.Errorf("path %q has an empty key", p)
			}
			parts = append(parts, cur.String())
			cur.Reset()
		case strings.IndexByte(plainPathSpecial, c) >= 0:
			return nil, fmt.Errorf("path %q uses %q, which only paths into Kubernetes objects may use (here a path is keys and list indexes, with \\ before a special character)", p, c)
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() == 0 {
		return nil, fmt.Errorf("path %q has an empty key", p)
	}
	return append(parts, cur.String()), nil
}

// splitPaths caches SplitPath for the renderer: the paths come from the
// data files, a small fixed set.
var splitPaths sync.Map // string -> []string

// keysOf is SplitPath, cached; a path that is not plain has no keys.
func keysOf(p string) []string {
	if k, ok := splitPaths.Load(p); ok {
		return k.([]string)
	}
	keys, err := SplitPath(p)
	if err != nil {
		return nil
	}
	splitPaths.Store(p, keys)
	return keys
}

// getPath follows keys (and list indexes) from v.
func getPath(v any, keys []string) (any, bool) {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[k]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// Expand fills the ${path} placeholders of tmpl with the values at those
// gjson paths in a JSON document (pods.find reads the workload this way);
// a path with no value is an error naming it.
func Expand(tmpl string, doc []byte) (string, error) {
	var missing []string
	out := placeholder.ReplaceAllStringFunc(tmpl, func(m string) string {
		path := strings.TrimSpace(m[2 : len(m)-1])
		v := lookupString(doc, path)
		if v == "" {
			missing = append(missing, path)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("the workload has no value at %s", strings.Join(missing, ", "))
	}
	return out, nil
}
