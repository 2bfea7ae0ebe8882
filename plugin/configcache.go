package plugin

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/paperclip-k8s/paperclip-k8s/engine/resource"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

// Every runtime hook carries the environment's config and parses it again
// (policy.Parse: JSON Schema, defaults, cross-field rules, the kubeconfig
// against what the operator allows): 0.3–0.5 ms a hook, on the path of
// every execute. The host sends the same config to every hook of an
// environment, so the plugin keeps the parsed configs of the last few.
//
// What policy.Parse's result depends on, and how the cache covers it:
//
//   - the raw config: Parse reads it as JSON. The key is the SHA-256 of
//     json.Marshal(raw) — canonical for a map[string]any, whose keys it
//     sorts — and exactly those bytes are what Parse is given on a miss, so
//     two configs with one key are one input to Parse. A value that does
//     not marshal is parsed without the cache.
//   - the loaded backends' names and aliases (the provider's Catalog): in
//     the key.
//   - the worker environment (policy.WithGetenv; today the kubeconfig
//     trust settings): the worker's env does not change during its life
//     (nothing in it calls os.Setenv), but Provider.Getenv is a field that
//     tests and embedders set. So no list of variables is assumed: a miss
//     records every variable Parse reads and its value, and a hit is one
//     only while each still reads the same.
//   - files embedded in the binary (the schema, the shipped aliases):
//     constant.
//
// Only successful parses are kept: a config that fails is the host's
// rare path (it validates a config before saving it), and keeping
// failures would let a caller's bad configs evict the good ones.
//
// The entries hold the kubeconfig (as every lease already does in
// memory); the key is a hash, and nothing here logs or returns a key.
// A hit returns a deep copy: the Config's maps and slices are the callers'
// to change without reaching the cache.
const configCacheSize = 64

// configs is shared by the providers of a process: the key and the
// recorded environment hold everything a parse depends on, so two
// providers share an entry only when Parse would give both the same
// Config.
var configs = newConfigCache(configCacheSize)

type configCache struct {
	max          int
	hits, misses atomic.Int64 // for the tests

	mu      sync.Mutex
	entries map[[sha256.Size]byte]*list.Element // of *configEntry
	order   list.List                           // front: most recently used
}

type configEntry struct {
	key [sha256.Size]byte
	cfg policy.Config
	env []envRead // what Parse read through getenv, in order
}

type envRead struct{ name, value string }

func newConfigCache(max int) *configCache {
	return &configCache{max: max, entries: map[[sha256.Size]byte]*list.Element{}}
}

// parse returns policy.Parse(raw, backends, WithGetenv(getenv),
// WithBackendAliases(aliases)), from the cache when the same inputs were
// parsed before. The Config returned is the caller's own.
func (c *configCache) parse(raw map[string]any, backends []string, aliases map[string]string, getenv func(string) string) (policy.Config, error) {
	data, err := json.Marshal(raw)
	if err != nil || getenv == nil || !configCopyable {
		return policy.Parse(raw, backends, policy.WithGetenv(getenv), policy.WithBackendAliases(aliases))
	}
	key := configKey(data, backends, aliases)
	if cfg, ok := c.get(key, getenv); ok {
		c.hits.Add(1)
		return cfg, nil
	}
	c.misses.Add(1)
	var env []envRead
	record := func(name string) string {
		v := getenv(name)
		env = append(env, envRead{name, v})
		return v
	}
	cfg, err := policy.Parse(json.RawMessage(data), backends, policy.WithGetenv(record), policy.WithBackendAliases(aliases))
	if err != nil {
		return cfg, err
	}
	c.put(&configEntry{key: key, cfg: deepCopyConfig(cfg), env: env})
	return cfg, nil
}

func (c *configCache) get(key [sha256.Size]byte, getenv func(string) string) (policy.Config, bool) {
	var e *configEntry
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.order.MoveToFront(el)
		e = el.Value.(*configEntry) // put may replace it; the entry itself is immutable
	}
	c.mu.Unlock()
	if e == nil {
		return policy.Config{}, false
	}
	for _, r := range e.env {
		if getenv(r.name) != r.value {
			return policy.Config{}, false // parsed again, and replaced, by the caller
		}
	}
	return deepCopyConfig(e.cfg), true
}

func (c *configCache) put(e *configEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[e.key]; ok {
		el.Value = e
		c.order.MoveToFront(el)
		return
	}
	c.entries[e.key] = c.order.PushFront(e)
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.entries, last.Value.(*configEntry).key)
	}
}

// backendAliases are the aliases the loaded backends' files declare,
// alias → backend name.
func (p *Provider) backendAliases() map[string]string {
	aliases := map[string]string{}
	for _, s := range p.Catalog.Used(resource.UseBackend) {
		for _, a := range s.Aliases {
			aliases[a] = s.Name
		}
	}
	return aliases
}

func (c *configCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// configKey hashes the config's JSON, the backend names and the aliases
// (sorted), each length-prefixed so that no two inputs run together.
func configKey(data []byte, backends []string, aliases map[string]string) [sha256.Size]byte {
	h := sha256.New()
	num := func(n int) { h.Write(binary.LittleEndian.AppendUint64(nil, uint64(n))) }
	field := func(s string) { num(len(s)); h.Write([]byte(s)) }
	num(len(data))
	h.Write(data)
	num(len(backends))
	for _, b := range backends {
		field(b)
	}
	names := make([]string, 0, len(aliases))
	for a := range aliases {
		names = append(names, a)
	}
	slices.Sort(names)
	num(len(names))
	for _, a := range names {
		field(a)
		field(aliases[a])
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// configCopyable is whether deepCopyConfig copies every map, slice and
// pointer a policy.Config reaches: true while none is behind an unexported
// field, an interface, a channel or a func. If a change to policy.Config
// made it false, the cache would stand aside (and TestConfigCacheCopiesEveryReference fails).
var configCopyable = deepCopyable(reflect.TypeFor[policy.Config](), map[reflect.Type]bool{})

func deepCopyable(t reflect.Type, seen map[reflect.Type]bool) bool {
	if seen[t] {
		return true
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && hasReference(f.Type) {
				return false
			}
			if !deepCopyable(f.Type, seen) {
				return false
			}
		}
		return true
	case reflect.Map:
		return !hasReference(t.Key()) && deepCopyable(t.Elem(), seen)
	case reflect.Slice, reflect.Array, reflect.Pointer:
		return deepCopyable(t.Elem(), seen)
	case reflect.Interface, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		return false
	default:
		return true
	}
}

func hasReference(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Map, reflect.Slice, reflect.Pointer, reflect.Interface, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		return true
	case reflect.Array:
		return hasReference(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasReference(t.Field(i).Type) {
				return true
			}
		}
	}
	return false
}

// deepCopyConfig returns a Config that shares no map, slice or pointer
// with cfg (nil stays nil, empty stays empty).
func deepCopyConfig(cfg policy.Config) policy.Config {
	var out policy.Config
	deepCopy(reflect.ValueOf(&out).Elem(), reflect.ValueOf(cfg))
	return out
}

func deepCopy(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Struct:
		dst.Set(src) // the value fields, and unexported ones (configCopyable: none holds a reference)
		for i := range src.NumField() {
			if src.Type().Field(i).IsExported() {
				deepCopy(dst.Field(i), src.Field(i))
			}
		}
	case reflect.Map:
		if src.IsNil() {
			dst.Set(reflect.Zero(src.Type()))
			return
		}
		m := reflect.MakeMapWithSize(src.Type(), src.Len())
		it := src.MapRange()
		for it.Next() {
			v := reflect.New(src.Type().Elem()).Elem()
			deepCopy(v, it.Value())
			m.SetMapIndex(it.Key(), v) // keys hold no reference (configCopyable)
		}
		dst.Set(m)
	case reflect.Slice:
		if src.IsNil() {
			dst.Set(reflect.Zero(src.Type()))
			return
		}
		s := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		for i := range src.Len() {
			deepCopy(s.Index(i), src.Index(i))
		}
		dst.Set(s)
	case reflect.Array:
		for i := range src.Len() {
			deepCopy(dst.Index(i), src.Index(i))
		}
	case reflect.Pointer:
		if src.IsNil() {
			dst.Set(reflect.Zero(src.Type()))
			return
		}
		p := reflect.New(src.Type().Elem())
		deepCopy(p.Elem(), src.Elem())
		dst.Set(p)
	default:
		dst.Set(src)
	}
}

// backendIdlePods are what the loaded backends' files declare under
// backend.idlePods, backend name → config pointers.
func (p *Provider) backendIdlePods() map[string][]string {
	out := map[string][]string{}
	for _, s := range p.Catalog.Used(resource.UseBackend) {
		if s.Backend != nil && len(s.Backend.IdlePods) > 0 {
			out[s.Name] = s.Backend.IdlePods
		}
	}
	return out
}
