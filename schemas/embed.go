// Package schemas embeds the project's JSON Schemas.
package schemas

import (
	"embed"
	"encoding/json"
	"strings"
)

// FS holds every schema file (*.json).
//
//go:embed *.json
var FS embed.FS

// ConfigSchema is the JSON Schema of the provider configuration:
// config.schema.json without its "x-" annotations (the per-field hints that
// plugin/policy reads from the file itself). The plugin manifest's
// environmentDrivers[].configSchema is this document, so the host and its
// UI see only portable keywords.
var ConfigSchema = withoutAnnotations("config.schema.json")

// withoutAnnotations returns a schema file re-encoded without the "x-"
// keywords of any of its subschemas (values such as defaults are kept as
// they are). The file is embedded: a broken one panics at start-up, and
// every test of the module fails.
func withoutAnnotations(name string) []byte {
	b, err := FS.ReadFile(name)
	if err != nil {
		panic(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		panic("schemas/" + name + ": " + err.Error())
	}
	var strip func(schema any)
	strip = func(schema any) {
		s, ok := schema.(map[string]any)
		if !ok {
			return
		}
		for k := range s {
			if strings.HasPrefix(k, "x-") {
				delete(s, k)
			}
		}
		if props, ok := s["properties"].(map[string]any); ok {
			for _, sub := range props {
				strip(sub)
			}
		}
		for _, k := range []string{"items", "additionalProperties", "propertyNames", "not"} {
			strip(s[k])
		}
		for _, k := range []string{"anyOf", "oneOf", "allOf"} {
			subs, _ := s[k].([]any)
			for _, sub := range subs {
				strip(sub)
			}
		}
	}
	strip(doc)
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic(err)
	}
	return out
}
