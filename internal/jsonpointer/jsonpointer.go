// Package jsonpointer is the one implementation of RFC 6901 JSON pointers
// the project uses: the pointers of config errors (plugin/policy) and of
// data-file errors (engine.FileError) are built and read with it.
package jsonpointer

import (
	"net/url"
	"strconv"
	"strings"
)

var escaper = strings.NewReplacer("~", "~0", "/", "~1")

// Escape returns a reference token for a key: '~' becomes "~0" and '/'
// becomes "~1".
func Escape(token string) string {
	if !strings.ContainsAny(token, "~/") {
		return token
	}
	return escaper.Replace(token)
}

// Unescape is the inverse of Escape ("~1" first, then "~0", as RFC 6901
// says, so "~01" gives "~1").
func Unescape(token string) string {
	if !strings.Contains(token, "~") {
		return token
	}
	return strings.ReplaceAll(strings.ReplaceAll(token, "~1", "/"), "~0", "~")
}

// Last returns the unescaped last reference token of ptr ("" for the root).
func Last(ptr string) string {
	return Unescape(ptr[strings.LastIndex(ptr, "/")+1:])
}

// Resolve returns the value at ptr in a decoded JSON document
// (map[string]any and []any), or nil when there is none.
func Resolve(doc any, ptr string) any {
	if ptr == "" {
		return doc
	}
	cur := doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = Unescape(tok)
		switch x := cur.(type) {
		case map[string]any:
			cur = x[tok]
		case []any:
			i, err := strconv.Atoi(tok)
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

// FromSchemaLocation turns an instance or keyword location of
// github.com/santhosh-tekuri/jsonschema/v5, whose reference tokens are also
// URL-path-escaped ("a b" is "a%20b"), into a plain RFC 6901 pointer.
func FromSchemaLocation(loc string) string {
	if !strings.Contains(loc, "%") {
		return loc
	}
	toks := strings.Split(loc, "/")
	for i, tok := range toks {
		if u, err := url.PathUnescape(tok); err == nil {
			toks[i] = u
		}
	}
	return strings.Join(toks, "/")
}
