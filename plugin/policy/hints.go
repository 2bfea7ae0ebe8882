package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// Per-field hints live in schemas/config.schema.json next to what they
// explain, as annotations the validator ignores and the manifest's copy of
// the schema leaves out (schemas.ConfigSchema):
//
//   - "x-hint", next to a "pattern": what a value that does not match
//     should look like; the error is "<value> <x-hint>" (for a
//     propertyNames pattern, "key <key> <x-hint>").
//   - "x-explain", next to a pattern whose values a parser here reads
//     fully: the parser's own reason (e.g. "has host bits set") replaces
//     x-hint when it finds one. Its value names an entry of explainers.
//   - "x-hint-<keyword>", for a failure of another keyword: said after that
//     keyword's message. "x-hint-minProperties" sits next to minProperties;
//     "x-hint-required" on the property that is required.
//
// checkHints refuses any other x- keyword, so a misspelt hint fails every
// Validate (and every test) instead of silently disappearing.

// noHint ends the message of a pattern that has no x-hint.
const noHint = "has an invalid format"

// hint returns the hint a schema node gives for a failed keyword, or "".
func hint(node map[string]any, keyword string) string {
	key := "x-hint"
	if keyword != "pattern" {
		key += "-" + keyword
	}
	s, _ := node[key].(string)
	return s
}

// withHint appends ": <hint>" to msg when there is a hint.
func withHint(msg, hint string) string {
	if hint == "" {
		return msg
	}
	return msg + ": " + hint
}

// explainers say precisely why a value is wrong, or "" when they find
// nothing wrong; a schema pattern names one with x-explain.
var explainers = map[string]func(string) string{
	"registry": registryProblem,
	"fqdn": func(s string) string {
		if _, err := canonicalFqdn(s); err != nil {
			return err.Error()
		}
		return ""
	},
	"cidr": func(s string) string {
		if _, err := ParseCIDR(s); err != nil {
			return err.Error()
		}
		return ""
	},
}

// patternHint says why s does not match the pattern of the subschema at
// loc (a location in config.schema.json, e.g. "/properties/backend") and
// what to write instead.
func patternHint(loc, s string) string {
	cs, err := loadSchema()
	if err != nil {
		return noHint
	}
	node, _ := jsonpointer.Resolve(cs.doc, loc).(map[string]any)
	if name, ok := node["x-explain"].(string); ok {
		if msg := explainers[name](s); msg != "" {
			return msg
		}
	}
	if h := hint(node, "pattern"); h != "" {
		return h
	}
	return noHint
}

// hintKeywords are the keywords an "x-hint-<keyword>" may name: those whose
// message leaf (schemaerrors.go) appends a hint.
var hintKeywords = []string{"required", "minProperties"}

// checkHints checks the x- annotations of every subschema of doc.
func checkHints(doc map[string]any) error {
	var errs []string
	var walk func(loc string, n map[string]any)
	walk = func(loc string, n map[string]any) {
		for k, x := range n {
			if !strings.HasPrefix(k, "x-") {
				continue
			}
			_, isStr := x.(string)
			_, hasPattern := n["pattern"]
			switch kw, isKw := strings.CutPrefix(k, "x-hint-"); {
			case !isStr:
				errs = append(errs, fmt.Sprintf("%s/%s is not a string", loc, k))
			case k == "x-hint" || k == "x-explain":
				if !hasPattern {
					errs = append(errs, fmt.Sprintf("%s/%s is not next to a pattern", loc, k))
				}
				if name := x.(string); k == "x-explain" && explainers[name] == nil {
					errs = append(errs, fmt.Sprintf("%s/x-explain names %q, which is not an explainer (%s)", loc, name, strings.Join(slices.Sorted(maps.Keys(explainers)), ", ")))
				}
			case isKw && slices.Contains(hintKeywords, kw):
			default:
				errs = append(errs, fmt.Sprintf("%s/%s is not an annotation the validator reads (x-hint, x-explain, x-hint-%s)", loc, k, strings.Join(hintKeywords, ", x-hint-")))
			}
		}
		if props, ok := n["properties"].(map[string]any); ok {
			for name, sub := range props {
				if sub, ok := sub.(map[string]any); ok {
					walk(loc+"/properties/"+jsonpointer.Escape(name), sub)
				}
			}
		}
		for _, k := range []string{"items", "additionalProperties", "propertyNames"} {
			if sub, ok := n[k].(map[string]any); ok {
				walk(loc+"/"+k, sub)
			}
		}
		for _, k := range []string{"anyOf", "oneOf", "allOf"} {
			for i, sub := range asSlice(n[k]) {
				if sub, ok := sub.(map[string]any); ok {
					walk(fmt.Sprintf("%s/%s/%d", loc, k, i), sub)
				}
			}
		}
	}
	walk("", doc)
	if len(errs) > 0 {
		slices.Sort(errs)
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
