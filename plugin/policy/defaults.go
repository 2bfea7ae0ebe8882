package policy

import (
	"encoding/json"
	"math/big"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// Defaults and normal form: the schema's defaults filled in, integers
// written plainly, and the typed Config decoded from the result.

// applyDefaults fills absent properties from the schema's defaults, deeply
// (into present objects and into array items).
func applyDefaults(schema map[string]any, inst any) {
	switch x := inst.(type) {
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		for k, ps := range props {
			sub, _ := ps.(map[string]any)
			if _, ok := x[k]; !ok {
				if d, ok := sub["default"]; ok {
					x[k] = deepCopy(d)
				}
			}
			if val, ok := x[k]; ok {
				applyDefaults(sub, val)
			}
		}
	case []any:
		items, _ := schema["items"].(map[string]any)
		if items == nil {
			return
		}
		for _, it := range x {
			applyDefaults(items, it)
		}
	}
}

// canonicalIntegers rewrites integer-typed top-level values such as 1e9 or
// 3100.0 as plain integers.
func (v *validation) canonicalIntegers() {
	for k, ps := range v.cs.props {
		sub, _ := ps.(map[string]any)
		if sub["type"] != "integer" {
			continue
		}
		n, ok := v.m[k].(json.Number)
		if !ok {
			continue
		}
		r, ok := new(big.Rat).SetString(string(n))
		if ok && r.IsInt() {
			v.m[k] = json.Number(r.Num().String())
		}
	}
}

// decode builds the typed Config from normalized, with values that failed
// the schema replaced by their defaults.
func (v *validation) decode() Config {
	m := deepCopy(v.m).(map[string]any)
	for k := range m {
		if _, ours := v.cs.props[k]; !ours {
			delete(m, k)
			continue
		}
		if v.bad("/" + jsonpointer.Escape(k)) {
			delete(m, k)
			sub, _ := v.cs.props[k].(map[string]any)
			if d, ok := sub["default"]; ok {
				m[k] = deepCopy(d)
			}
		}
	}
	var cfg Config
	b, err := json.Marshal(m)
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		v.add("", "internal error: config does not decode: "+err.Error())
	}
	return cfg
}

func deepCopy(x any) any {
	switch v := x.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = deepCopy(e)
		}
		return s
	}
	return x
}
