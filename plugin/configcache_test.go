package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/policy"
)

const cacheTestToken = "S3CRET-CACHE-TOKEN-1c9e"

// richConfig sets every field of policy.Config that holds a map, a slice or
// a pointer (TestConfigCacheCopiesEveryReference checks that it does), with
// a kubeconfig so that Parse reads the worker environment.
func richConfig() map[string]any {
	return map[string]any{
		"kubeconfig": `apiVersion: v1
kind: Config
current-context: ctx
clusters:
- name: c
  cluster:
    server: https://api.example.com:6443
users:
- name: u
  user:
    token: ` + cacheTestToken + `
contexts:
- name: ctx
  context: {cluster: c, user: u}
`,
		"backend": "sandbox", "namespacePrefix": "paperclip-", "sandboxLifetimeSec": 3600,
		"imageAllowList":            []any{"ghcr.io/example/*"},
		"imagePullSecrets":          []any{"regcred"},
		"egressAllowFqdns":          []any{"api.example.com"},
		"egressAllowCidrs":          []any{"203.0.113.0/24"},
		"paperclipServerPodLabels":  map[string]any{"app": "paperclip"},
		"nodeSelector":              map[string]any{"pool": "agents"},
		"resourceQuota":             map[string]any{"pods": "10"},
		"serviceAccountAnnotations": map[string]any{"example.com/role": "agent"},
		"adapterType":               "my_agent",
		"adapters": []any{map[string]any{
			"adapterType": "my_agent", "enabled": true, "runtimeImage": "ghcr.io/example/agent:1",
			"envKeys": []any{"MY_AGENT_KEY"}, "allowFqdns": []any{"llm.example.com"},
			"probeCommand": []any{"my-agent", "--version"}, "defaultEnv": map[string]any{"MY_AGENT_MODE": "ci"},
		}},
	}
}

func cacheTestProvider(t *testing.T) *Provider {
	t.Helper()
	p, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p.Getenv = func(string) string { return "" }
	return p
}

// uncached is what parseConfig returned before the cache.
func uncached(t *testing.T, p *Provider, raw map[string]any) policy.Config {
	t.Helper()
	cfg, err := policy.Parse(raw, p.Catalog.BackendNames(), p.policyOptions()...)
	if err != nil {
		t.Fatalf("the test config does not parse: %v", err)
	}
	return cfg
}

func parseVia(c *configCache, p *Provider, raw map[string]any) (policy.Config, error) {
	return c.parse(raw, p.Catalog.BackendNames(), p.backendAliases(), p.Getenv)
}

func TestConfigCacheHitReturnsEqualConfig(t *testing.T) {
	is := is.New(t)
	p := cacheTestProvider(t)
	c := newConfigCache(8)
	want := uncached(t, p, richConfig())

	first, err := parseVia(c, p, richConfig())
	is.NoErr(err)
	is.Equal(c.misses.Load(), int64(1))
	is.Equal(c.hits.Load(), int64(0))
	is.True(reflect.DeepEqual(first, want)) // a miss returns what policy.Parse returns

	second, err := parseVia(c, p, richConfig())
	is.NoErr(err)
	is.Equal(c.hits.Load(), int64(1))
	is.True(reflect.DeepEqual(second, want)) // a hit returns an equal Config

	// The host's JSON (numbers as float64, a new map) is the same config.
	var fromJSON map[string]any
	b, err := json.Marshal(richConfig())
	is.NoErr(err)
	is.NoErr(json.Unmarshal(b, &fromJSON))
	third, err := parseVia(c, p, fromJSON)
	is.NoErr(err)
	is.Equal(c.hits.Load(), int64(2))
	is.True(reflect.DeepEqual(third, want))
	is.Equal(c.len(), 1)
}

func TestConfigCacheMissesOnChange(t *testing.T) {
	p := cacheTestProvider(t)
	changes := map[string]func(m map[string]any){
		"a top-level value": func(m map[string]any) { m["namespacePrefix"] = "agents-" },
		"a number":          func(m map[string]any) { m["sandboxLifetimeSec"] = 3601 },
		"a nested value": func(m map[string]any) {
			m["adapters"].([]any)[0].(map[string]any)["defaultEnv"] = map[string]any{"MY_AGENT_MODE": "prod"}
		},
		"the kubeconfig": func(m map[string]any) {
			m["kubeconfig"] = strings.Replace(m["kubeconfig"].(string), "api.example.com", "api2.example.com", 1)
		},
		"a new key": func(m map[string]any) { m["companySlug"] = "acme" },
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			c := newConfigCache(8)
			_, err := parseVia(c, p, richConfig())
			is.NoErr(err)
			changed := richConfig()
			change(changed)
			want := uncached(t, p, changed)
			got, err := parseVia(c, p, changed)
			is.NoErr(err)
			is.Equal(c.misses.Load(), int64(2)) // the changed config is parsed
			is.Equal(c.hits.Load(), int64(0))
			is.True(reflect.DeepEqual(got, want))
			is.True(!reflect.DeepEqual(got, uncached(t, p, richConfig())))
		})
	}

	t.Run("the loaded backends", func(t *testing.T) {
		is := is.New(t)
		c := newConfigCache(8)
		raw := richConfig()
		_, err := c.parse(raw, p.Catalog.BackendNames(), p.backendAliases(), p.Getenv)
		is.NoErr(err)
		// A worker without the sandbox backend refuses the config.
		_, err = c.parse(raw, []string{"job"}, p.backendAliases(), p.Getenv)
		is.True(err != nil)
		is.True(strings.Contains(err.Error(), "backend"))
		is.Equal(c.hits.Load(), int64(0))
	})

	t.Run("the backend aliases", func(t *testing.T) {
		is := is.New(t)
		c := newConfigCache(8)
		raw := richConfig()
		raw["backend"] = "agentbox"
		aliases := p.backendAliases()
		aliases["agentbox"] = "sandbox"
		cfg, err := c.parse(raw, p.Catalog.BackendNames(), aliases, p.Getenv)
		is.NoErr(err)
		is.Equal(cfg.Backend, "sandbox")
		aliases["agentbox"] = "job"
		cfg, err = c.parse(raw, p.Catalog.BackendNames(), aliases, p.Getenv)
		is.NoErr(err)
		is.Equal(cfg.Backend, "job")
		is.Equal(c.hits.Load(), int64(0))
	})

	t.Run("the worker environment Parse reads", func(t *testing.T) {
		is := is.New(t)
		c := newConfigCache(8)
		var mu sync.Mutex
		env := map[string]string{}
		getenv := func(k string) string { mu.Lock(); defer mu.Unlock(); return env[k] }
		setenv := func(k, v string) { mu.Lock(); defer mu.Unlock(); env[k] = v }
		parse := func() error {
			_, err := c.parse(richConfig(), p.Catalog.BackendNames(), p.backendAliases(), getenv)
			return err
		}
		is.NoErr(parse())
		is.NoErr(parse())
		is.Equal(c.hits.Load(), int64(1))
		// The operator allows other API servers only: the kubeconfig is refused,
		// not served from the cache.
		setenv(policy.EnvAllowedAPIServers, "other.example.com")
		err := parse()
		is.True(err != nil)
		is.True(strings.Contains(err.Error(), "kubeconfig"))
		is.True(!strings.Contains(err.Error(), cacheTestToken)) // the secret stays out of the error
		is.Equal(c.hits.Load(), int64(1))
		// A variable Parse does not read changes nothing.
		setenv(policy.EnvAllowedAPIServers, "")
		setenv("SOME_OTHER_VARIABLE", "x")
		is.NoErr(parse())
		is.Equal(c.hits.Load(), int64(2))
	})
}

func TestConfigCacheKeepsNoErrors(t *testing.T) {
	is := is.New(t)
	p := cacheTestProvider(t)
	c := newConfigCache(8)
	bad := richConfig()
	bad["sandboxLifetimeSec"] = "an hour"
	for range 2 {
		_, err := parseVia(c, p, bad)
		is.True(err != nil)
		is.True(strings.Contains(err.Error(), "/sandboxLifetimeSec"))
	}
	is.Equal(c.misses.Load(), int64(2))
	is.Equal(c.len(), 0)
}

// TestConfigCacheCopiesEveryReference: every map, slice and pointer a
// Config reaches is set by richConfig, and a caller that changes all of
// them in the Config it got changes nothing in the next hit.
func TestConfigCacheCopiesEveryReference(t *testing.T) {
	is := is.New(t)
	is.True(configCopyable)
	p := cacheTestProvider(t)
	want := uncached(t, p, richConfig())
	for _, path := range emptyReferences(reflect.ValueOf(want), "Config") {
		t.Errorf("%s is nil or empty in the parsed richConfig: set it there, so that this test checks its copy", path)
	}

	c := newConfigCache(8)
	got, err := parseVia(c, p, richConfig()) // the miss's copy
	is.NoErr(err)
	scribble(reflect.ValueOf(&got).Elem())
	is.True(!reflect.DeepEqual(got, want)) // the scribbling reached the values
	hit, err := parseVia(c, p, richConfig())
	is.NoErr(err)
	is.True(reflect.DeepEqual(hit, want))
	scribble(reflect.ValueOf(&hit).Elem()) // the hit's copy
	again, err := parseVia(c, p, richConfig())
	is.NoErr(err)
	is.Equal(c.hits.Load(), int64(2))
	is.True(reflect.DeepEqual(again, want))
}

func TestDeepCopyable(t *testing.T) {
	is := is.New(t)
	check := func(v any) bool { return deepCopyable(reflect.TypeOf(v), map[reflect.Type]bool{}) }
	is.True(check(policy.Config{}))
	is.True(check(struct {
		A []string
		B map[string][]int
		C *bool
		d int
	}{}))
	is.True(!check(struct{ A any }{}))          // an interface: its dynamic value is not known
	is.True(!check(struct{ a []string }{}))     // unexported: reflection cannot copy it
	is.True(!check(struct{ M map[*int]int }{})) // a key that is a reference
	is.True(!check(struct{ F func() }{}))
}

func TestConfigCacheBound(t *testing.T) {
	is := is.New(t)
	p := cacheTestProvider(t)
	c := newConfigCache(4)
	cfg := func(i int) map[string]any {
		m := richConfig()
		m["namespacePrefix"] = fmt.Sprintf("p%d-", i)
		return m
	}
	for i := range 10 {
		_, err := parseVia(c, p, cfg(i))
		is.NoErr(err)
		is.True(c.len() <= 4)
	}
	is.Equal(c.len(), 4)
	// Least recently used goes first: 6..9 are kept; use 6, add 10: 7 goes.
	hits := c.hits.Load()
	_, err := parseVia(c, p, cfg(6))
	is.NoErr(err)
	is.Equal(c.hits.Load(), hits+1)
	_, err = parseVia(c, p, cfg(10))
	is.NoErr(err)
	for _, i := range []int{6, 8, 9, 10} {
		_, err = parseVia(c, p, cfg(i))
		is.NoErr(err)
	}
	is.Equal(c.hits.Load(), hits+5)
	misses := c.misses.Load()
	_, err = parseVia(c, p, cfg(7))
	is.NoErr(err)
	is.Equal(c.misses.Load(), misses+1)
	is.Equal(c.len(), 4)
}

// TestConfigCacheConcurrent is for -race: goroutines parse, hit, evict
// and change their copies at the same time.
func TestConfigCacheConcurrent(t *testing.T) {
	is := is.New(t)
	p := cacheTestProvider(t)
	c := newConfigCache(2) // smaller than the set: entries are evicted under load
	var raws []map[string]any
	var wants []policy.Config
	for i := range 3 {
		m := richConfig()
		m["namespacePrefix"] = fmt.Sprintf("c%d-", i)
		raws = append(raws, m)
		wants = append(wants, uncached(t, p, m))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				k := (g + i) % len(raws)
				got, err := parseVia(c, p, maps.Clone(raws[k]))
				if err != nil {
					errs <- err
					return
				}
				if !reflect.DeepEqual(got, wants[k]) {
					errs <- fmt.Errorf("goroutine %d, parse %d: config %d differs from policy.Parse's", g, i, k)
					return
				}
				scribble(reflect.ValueOf(&got).Elem())
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	is.True(c.len() <= 2)
	is.True(c.hits.Load() > 0)
}

func TestParseConfigUsesTheCache(t *testing.T) {
	is := is.New(t)
	p := cacheTestProvider(t)
	raw := richConfig()
	raw["namespacePrefix"] = "parseconfig-"
	hits := configs.hits.Load()
	a, err := p.parseConfig(raw)
	is.NoErr(err)
	b, err := p.parseConfig(raw)
	is.NoErr(err)
	is.True(configs.hits.Load() > hits)
	is.True(reflect.DeepEqual(a, b))
	is.True(reflect.DeepEqual(a, uncached(t, p, raw)))

	raw["sandboxLifetimeSec"] = -1
	_, err = p.parseConfig(raw)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "invalid Kubernetes provider config: /sandboxLifetimeSec"))
}

// emptyReferences lists the maps, slices and pointers under v that are nil
// or empty (so a test could not see whether they are copied).
func emptyReferences(v reflect.Value, path string) []string {
	var out []string
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			out = append(out, emptyReferences(v.Field(i), path+"."+v.Type().Field(i).Name)...)
		}
	case reflect.Map, reflect.Slice:
		if v.Len() == 0 {
			return []string{path}
		}
		if v.Kind() == reflect.Slice {
			for i := range v.Len() {
				out = append(out, emptyReferences(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
			}
		} else {
			it := v.MapRange()
			for it.Next() {
				out = append(out, emptyReferences(it.Value(), fmt.Sprintf("%s[%v]", path, it.Key()))...)
			}
		}
	case reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		out = append(out, emptyReferences(v.Elem(), path)...)
	}
	return out
}

// scribble changes every value under v in place: strings, numbers and
// booleans, the elements of slices and the entries of maps, through pointers.
func scribble(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				scribble(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			scribble(v.Index(i))
		}
	case reflect.Map:
		if v.IsNil() {
			return
		}
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			scribble(e)
			v.SetMapIndex(k, e)
		}
		if v.Type().Key().Kind() == reflect.String {
			v.SetMapIndex(reflect.ValueOf("scribbled").Convert(v.Type().Key()), reflect.New(v.Type().Elem()).Elem())
		}
	case reflect.Pointer:
		if !v.IsNil() {
			scribble(v.Elem())
		}
	case reflect.String:
		v.SetString(v.String() + "-scribbled")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1)
	}
}

// BenchmarkParseConfig prints what a hook spends on its config: policy.Parse
// (every hook before the cache, and a miss) against a hit.
func BenchmarkParseConfig(b *testing.B) {
	p, err := New(slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	raw := richConfig()
	b.Run("policy.Parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := policy.Parse(raw, p.Catalog.BackendNames(), p.policyOptions()...); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache hit", func(b *testing.B) {
		c := newConfigCache(configCacheSize)
		for b.Loop() {
			if _, err := parseVia(c, p, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
