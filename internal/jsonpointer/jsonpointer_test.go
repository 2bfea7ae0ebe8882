package jsonpointer

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/matryer/is"
	"github.com/santhosh-tekuri/jsonschema/v5"
)

func TestEscapeRoundTrip(t *testing.T) {
	for _, tok := range []string{"", "plain", "a/b", "~", "~1", "~01", "/~/", "example.com/pool", "a b%2F"} {
		is := is.New(t)
		esc := Escape(tok)
		is.True(!strings.Contains(esc, "/")) // an escaped token never splits a pointer
		is.Equal(Unescape(esc), tok)
	}
	is := is.New(t)
	is.Equal(Escape("a/b~c"), "a~1b~0c")
	is.Equal(Unescape("~01"), "~1") // not "/"
}

func TestResolve(t *testing.T) {
	is := is.New(t)
	doc := map[string]any{
		"a/b":  map[string]any{"~k": []any{"x", "y"}},
		"list": []any{map[string]any{"n": 1}},
	}
	is.Equal(Resolve(doc, "/a~1b/~0k/1"), "y")
	is.Equal(Resolve(doc, "/list/0/n"), 1)
	is.Equal(Resolve(doc, ""), any(doc))
	for _, miss := range []string{"/nope", "/list/1", "/list/-1", "/list/x", "/list/0/n/deeper"} {
		is.Equal(Resolve(doc, miss), nil)
	}
}

func TestLast(t *testing.T) {
	is := is.New(t)
	is.Equal(Last("/nodeSelector/example.com~1pool"), "example.com/pool")
	is.Equal(Last("/properties/items"), "items")
	is.Equal(Last(""), "")
}

// The validator's locations are URL-path-escaped as well as RFC 6901
// escaped; FromSchemaLocation gives the plain pointer of the offending key.
func TestFromSchemaLocation(t *testing.T) {
	is := is.New(t)
	c := jsonschema.NewCompiler()
	is.NoErr(c.AddResource("s.json", bytes.NewReader([]byte(`{"additionalProperties": {"type": "string"}}`))))
	s, err := c.Compile("s.json")
	is.NoErr(err)
	key := "a b/c~d%"
	err = s.Validate(map[string]any{key: 1})
	var ve *jsonschema.ValidationError
	is.True(errors.As(err, &ve))
	for len(ve.Causes) > 0 {
		ve = ve.Causes[0]
	}
	is.True(ve.InstanceLocation != "/"+Escape(key)) // the library's own form differs
	is.Equal(FromSchemaLocation(ve.InstanceLocation), "/"+Escape(key))
	is.Equal(Last(FromSchemaLocation(ve.InstanceLocation)), key)
	is.Equal(FromSchemaLocation("/plain/0"), "/plain/0")
}
