package resource

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/matryer/is"
	"github.com/tidwall/gjson"
)

// A plain path means the same in the template lookup as in gjson, the one
// path language of the data files.
func TestPlainPathsMeanWhatGjsonMeans(t *testing.T) {
	is := is.New(t)
	doc := map[string]any{
		"run":    map[string]any{"name": "pc-1", "labels": map[string]any{"paperclip.io/run-id": "r1", "a.b": "dot"}},
		"list":   []any{"x", map[string]any{"k": int64(7)}},
		"config": map[string]any{"egressMode": "standard", "empty": []any{}},
	}
	raw, err := json.Marshal(doc)
	is.NoErr(err)
	for _, p := range []string{"run.name", `run.labels.paperclip\.io/run-id`, `run.labels.a\.b`, "list.0", "list.1.k", "list.2", "config.empty", "config.nothere", "run.name.deeper"} {
		keys, err := SplitPath(p)
		is.NoErr(err)
		got, found := getPath(doc, keys)
		want := gjson.GetBytes(raw, p)
		is.Equal(found, want.Exists()) // same presence as gjson
		if found {
			b, _ := json.Marshal(got)
			is.Equal(string(b), want.Raw) // same value as gjson
		}
	}
	for _, bad := range []string{"", "a..b", "a.", `a\`, "status.conditions.#(type==\"Ready\")", "a.*", "a|b", "@this"} {
		_, err := SplitPath(bad)
		is.True(err != nil) // not a plain path
	}
}

// $if takes the match objects of when and health.rules; a wrong one names
// the file and the place.
func TestIfTakesMatchObjects(t *testing.T) {
	is := is.New(t)
	render := func(tmpl string, values map[string]any) (any, error) {
		s, err := Parse("t.yaml", []byte("apiVersion: paperclip-k8s.io/v1alpha1\nkind: Resource\nname: t\ndescription: d\nscope: tenant\napi: {group: '', kind: ConfigMap, resource: configmaps, versions: [v1]}\ntemplate:\n  metadata: {name: x}\n  data:\n    "+tmpl+"\n"))
		is.NoErr(err)
		obj, _, err := s.Render(values)
		if err != nil {
			return nil, err
		}
		return obj["data"], nil
	}
	v := map[string]any{"mode": "cilium", "fqdns": []any{"a.example"}, "cidrs": []any{}, "port": 0}
	got, err := render(`k: {$if: [{path: mode, equals: cilium}, {path: fqdns}, {path: cidrs, empty: true}], then: A, else: B}`, v)
	is.NoErr(err)
	is.Equal(got, map[string]any{"k": "A"})
	got, err = render(`k: {$if: [{path: cidrs}], then: A, else: B}`, v)
	is.NoErr(err)
	is.Equal(got, map[string]any{"k": "B"}) // an empty list is not set
	got, err = render(`k: {$if: [{path: nothere, exists: false}, {path: port, empty: true}], then: A}`, v)
	is.NoErr(err)
	is.Equal(got, map[string]any{"k": "A"})

	_, err = render(`k: {$if: [mode], then: A}`, v)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "t.yaml: /template/data/k/$if/0: a $if item is a match object"))
	_, err = render(`k: {$if: [{path: mode, equal: cilium}], then: A}`, v)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), `t.yaml: /template/data/k/$if/0: not a match object: json: unknown field "equal"`))
	_, err = render(`k: {$if: {path: mode}, then: A}`, v)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "t.yaml: /template/data/k/$if: $if takes a list of match objects"))
}
