package policy

import (
	"fmt"
	"io/fs"
	"slices"
	"sync"

	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/resources"
)

// WithBackendAliases gives Validate the aliases of the loaded backends,
// alias → backend name: what each data file declares under `aliases:` (the
// engine's catalog). A config naming an alias is saved with the name.
// Without it Validate uses the aliases the shipped resources/ files
// declare.
func WithBackendAliases(aliases map[string]string) Option {
	return func(o *options) { o.aliases = aliases }
}

// shippedHead is what validation reads of a shipped resource file.
type shippedHead struct {
	Name    string   `json:"name"`
	Aliases []string `json:"aliases"`
	Backend struct {
		IdlePods []string `json:"idlePods"`
	} `json:"backend"`
}

// shippedHeads are the heads of the files of resources/. A file that does
// not parse is skipped: engine.Load reports it.
var shippedHeads = sync.OnceValue(func() []shippedHead {
	var out []shippedHead
	files, _ := fs.Glob(resources.FS, "*.yaml")
	for _, f := range files {
		b, err := fs.ReadFile(resources.FS, f)
		if err != nil {
			continue
		}
		var head shippedHead
		if yaml.Unmarshal(b, &head) == nil {
			out = append(out, head)
		}
	}
	return out
})

// shippedAliases are the aliases the files of resources/ declare, alias →
// name.
var shippedAliases = sync.OnceValue(func() map[string]string {
	out := map[string]string{}
	for _, h := range shippedHeads() {
		for _, a := range h.Aliases {
			out[a] = h.Name
		}
	}
	return out
})

// checkBackend puts an alias of the backend in its canonical form (with a
// warning) and checks it against the loaded backends, whose list may name
// aliases too. An empty list skips the check.
func (v *validation) checkBackend(backends []string, aliases map[string]string) {
	c := &v.cfg
	if v.bad("/backend") {
		return
	}
	canonical := func(name string) string {
		if n, ok := aliases[name]; ok {
			return n
		}
		return name
	}
	if canon := canonical(c.Backend); canon != c.Backend {
		v.warnings = append(v.warnings, fmt.Sprintf("backend %q is the legacy name of %q; it is saved as %q", c.Backend, canon, canon))
		c.Backend = canon
		v.m["backend"] = canon
	}
	if len(backends) == 0 {
		return
	}
	known := make([]string, 0, len(backends))
	for _, b := range backends {
		if b = canonical(b); !slices.Contains(known, b) {
			known = append(known, b)
		}
	}
	slices.Sort(known)
	if !slices.Contains(known, c.Backend) {
		v.add("/backend", fmt.Sprintf("%q is not an available backend: use %s", c.Backend, orList(quoteAll(known))))
	}
}
