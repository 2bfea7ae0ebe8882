package policy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// sourceSchema is config.schema.json as written, with its x- annotations.
func sourceSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := schemas.FS.ReadFile("config.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func node(t *testing.T, doc map[string]any, loc string) map[string]any {
	t.Helper()
	n, ok := jsonpointer.Resolve(doc, loc).(map[string]any)
	if !ok {
		t.Fatalf("%s: no subschema", loc)
	}
	return n
}

func TestHintLookup(t *testing.T) {
	is := is.New(t)
	n := map[string]any{"pattern": "^a$", "x-hint": "is not a", "x-hint-required": "give a", "x-hint-minProperties": 7}
	is.Equal(hint(n, "pattern"), "is not a")
	is.Equal(hint(n, "required"), "give a")
	is.Equal(hint(n, "minProperties"), "") // not a string
	is.Equal(hint(n, "maxLength"), "")
	is.Equal(hint(nil, "pattern"), "")
	is.Equal(withHint("is required", "give a"), "is required: give a")
	is.Equal(withHint("is required", ""), "is required")
}

// The hint of a pattern is the schema's x-hint, read from the file: the
// message of every top-level pattern field is the value and its x-hint.
func TestPatternHintsComeFromTheSchema(t *testing.T) {
	doc := sourceSchema(t)
	props := doc["properties"].(map[string]any)
	checked := 0
	for name, p := range props {
		p := p.(map[string]any)
		h, ok := p["x-hint"].(string)
		if _, explained := p["x-explain"]; !ok || explained || p["type"] != "string" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			is.Equal(patternHint("/properties/"+name, "x y"), h)
			_, _, _, errs := Validate(map[string]any{"inCluster": true, name: "Not Valid!"}, testBackends)
			is.Equal(len(errs), 1)
			is.Equal(errs[0].Error(), "/"+name+`: "Not Valid!" `+h)
		})
		checked++
	}
	if checked < 7 {
		t.Fatalf("only %d pattern fields checked", checked)
	}
}

// A pattern with x-explain gives the parser's precise reason first and
// falls back to its x-hint.
func TestPatternHintExplainers(t *testing.T) {
	is := is.New(t)
	doc := sourceSchema(t)
	reg := node(t, doc, "/properties/imageRegistry")
	is.Equal(reg["x-explain"], "registry")
	is.Equal(patternHint("/properties/imageRegistry", "https://r.example.com"), registryProblem("https://r.example.com"))
	cidr := "/properties/egressAllowCidrs/items"
	_, perr := ParseCIDR("10.0.0.1/8")
	is.True(perr != nil)
	is.Equal(patternHint(cidr, "10.0.0.1/8"), perr.Error())
	fq := "/properties/adapters/items/properties/allowFqdns/items"
	_, ferr := canonicalFqdn("-bad-.example.com")
	is.True(ferr != nil)
	is.Equal(patternHint(fq, "-bad-.example.com"), ferr.Error())
	// A value the parser accepts gets the x-hint.
	is.Equal(patternHint(fq, "api.example.com"), node(t, doc, fq)["x-hint"])
	// No subschema, or one without a hint: the generic ending.
	is.Equal(patternHint("/properties/nothing", "x"), noHint)
	is.Equal(patternHint("/properties/inCluster", "x"), noHint)
}

// The hints of other keywords: x-hint-required on the missing property,
// x-hint-minProperties next to minProperties.
func TestKeywordHintsComeFromTheSchema(t *testing.T) {
	is := is.New(t)
	doc := sourceSchema(t)
	req := node(t, doc, "/properties/adapters/items/properties/adapterType")["x-hint-required"].(string)
	minp := node(t, doc, "/properties/paperclipServerPodLabels")["x-hint-minProperties"].(string)
	_, _, _, errs := Validate(map[string]any{"inCluster": true, "adapters": []any{map[string]any{"runtimeImage": "a/b:1"}}, "paperclipServerPodLabels": map[string]any{}}, testBackends)
	is.Equal(FieldErrors(errs).Strings(), []string{
		"/adapters/0/adapterType: is required: " + req,
		"/paperclipServerPodLabels: must not be empty: " + minp,
	})
}

func TestCheckHints(t *testing.T) {
	is := is.New(t)
	is.NoErr(checkHints(sourceSchema(t)))
	for _, tt := range []struct {
		name string
		doc  string
		want string
	}{
		{"misspelt", `{"properties":{"a":{"pattern":"^a$","x-hnit":"h"}}}`, `/properties/a/x-hnit is not an annotation the validator reads`},
		{"hint without pattern", `{"properties":{"a":{"type":"string","x-hint":"h"}}}`, `/properties/a/x-hint is not next to a pattern`},
		{"unknown explainer", `{"properties":{"a":{"items":{"pattern":"^a$","x-explain":"ipv9"}}}}`, `/properties/a/items/x-explain names "ipv9", which is not an explainer (cidr, fqdn, registry)`},
		{"not a string", `{"propertyNames":{"pattern":"^a$","x-hint":1}}`, `/propertyNames/x-hint is not a string`},
		{"keyword hint for a keyword without one", `{"x-hint-maxLength":"h"}`, `/x-hint-maxLength is not an annotation the validator reads`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			is := is.New(t)
			var doc map[string]any
			is.NoErr(json.Unmarshal([]byte(tt.doc), &doc))
			err := checkHints(doc)
			is.True(err != nil)
			is.True(strings.Contains(err.Error(), tt.want)) // names the location and the fix
		})
	}
}

// The manifest's copy of the schema (schemas.ConfigSchema) is the file
// without its annotations, and nothing else changes.
func TestManifestSchemaHasNoAnnotations(t *testing.T) {
	is := is.New(t)
	src := sourceSchema(t)
	var strip func(n map[string]any)
	strip = func(n map[string]any) {
		for k, x := range n {
			if strings.HasPrefix(k, "x-") {
				delete(n, k)
				continue
			}
			if sub, ok := x.(map[string]any); ok && k != "default" {
				strip(sub)
			}
		}
	}
	strip(src)
	is.True(bytes.Contains(mustRead(t), []byte(`"x-hint"`))) // the file does carry them
	is.True(!bytes.Contains(schemas.ConfigSchema, []byte(`"x-`)))
	is.True(jsonEqual(t, schemaDoc(t), src))
}

func mustRead(t *testing.T) []byte {
	t.Helper()
	b, err := schemas.FS.ReadFile("config.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
