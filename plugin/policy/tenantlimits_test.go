package policy

import (
	"os"
	"strings"
	"testing"

	"github.com/matryer/is"
	"sigs.k8s.io/yaml"
)

// defaultResources is validated against what the API server enforces on
// every pod of the tenant: the LimitRange's maximum (tenantLimits) and the
// ResourceQuota's totals; tenantLimits itself must hold the LimitRange's
// default container limit.
func TestTenantLimits(t *testing.T) {
	cfg := func(kv ...any) map[string]any {
		m := map[string]any{"inCluster": true}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	res := func(kind, r, v string) map[string]any {
		return map[string]any{kind: map[string]any{r: v}}
	}
	t.Run("defaults", func(t *testing.T) {
		is := is.New(t)
		c, norm, _, errs := Validate(cfg(), testBackends)
		is.Equal(errs, nil)
		is.Equal(c.TenantLimits, TenantLimits{MaxCPU: "4", MaxMemory: "8Gi"}) // today's LimitRange
		is.Equal(norm["tenantLimits"], map[string]any{"maxCpu": "4", "maxMemory": "8Gi"})
	})
	t.Run("a limit over the LimitRange max", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("defaultResources", res("limits", "memory", "16Gi")), testBackends)
		is.Equal(pointers(errs), []string{"/defaultResources/limits/memory"})
		is.True(strings.Contains(errs[0].Message, `"16Gi" is more than the tenant LimitRange's maximum "8Gi" (the default) at /tenantLimits/maxMemory`))
		is.True(strings.Contains(errs[0].Message, "raise /tenantLimits/maxMemory"))
		// Raised: fine.
		c, _, _, errs := Validate(cfg("defaultResources", res("limits", "memory", "16Gi"), "tenantLimits", map[string]any{"maxMemory": "16Gi"}), testBackends)
		is.Equal(errs, nil)
		is.Equal(c.TenantLimits, TenantLimits{MaxCPU: "4", MaxMemory: "16Gi"})
	})
	t.Run("the default limit over a lowered max", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("tenantLimits", map[string]any{"maxCpu": "1500m"}), testBackends)
		is.Equal(pointers(errs), []string{"/defaultResources/limits/cpu"})
		is.True(strings.Contains(errs[0].Message, `"2" (the default) is more than the tenant LimitRange's maximum "1500m" at /tenantLimits/maxCpu`))
	})
	t.Run("a request over the max", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("defaultResources", map[string]any{"requests": map[string]any{"cpu": "3"}, "limits": map[string]any{"cpu": "3"}},
			"tenantLimits", map[string]any{"maxCpu": "2"}), testBackends)
		is.Equal(pointers(errs), []string{"/defaultResources/limits/cpu", "/defaultResources/requests/cpu"})
	})
	t.Run("max below the LimitRange's default limit", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("tenantLimits", map[string]any{"maxMemory": "1Gi"}, "defaultResources", res("limits", "memory", "1Gi")), testBackends)
		is.Equal(pointers(errs), []string{"/tenantLimits/maxMemory"})
		is.True(strings.Contains(errs[0].Message, `"1Gi" is below "2Gi", the tenant LimitRange's default container limit for memory`))
	})
	t.Run("not a quantity", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("tenantLimits", map[string]any{"maxCpu": "four"}), testBackends)
		is.Equal(pointers(errs), []string{"/tenantLimits/maxCpu"})
		is.True(strings.Contains(errs[0].Message, "Kubernetes quantity"))
	})
	t.Run("over the ResourceQuota", func(t *testing.T) {
		is := is.New(t)
		_, _, _, errs := Validate(cfg("resourceQuota", map[string]any{"pods": "5", "limits.memory": "3Gi"}), testBackends)
		is.Equal(pointers(errs), []string{"/defaultResources/limits/memory"})
		is.True(strings.Contains(errs[0].Message, `"4Gi" (the default) is more than the tenant ResourceQuota's limits.memory "3Gi"`))
		is.True(strings.Contains(errs[0].Message, `raise resourceQuota["limits.memory"]`))
	})
}

// limitRangeDefault is the default container limit of the data file.
func TestLimitRangeDefaultMatchesTheFile(t *testing.T) {
	is := is.New(t)
	b, err := os.ReadFile("../../resources/limitrange.yaml")
	is.NoErr(err)
	var f struct {
		Template struct {
			Spec struct {
				Limits []struct {
					Type    string            `json:"type"`
					Max     map[string]string `json:"max"`
					Default map[string]string `json:"default"`
				} `json:"limits"`
			} `json:"spec"`
		} `json:"template"`
	}
	is.NoErr(yaml.Unmarshal(b, &f))
	is.Equal(len(f.Template.Spec.Limits), 1)
	l := f.Template.Spec.Limits[0]
	is.Equal(l.Type, "Container")
	is.Equal(l.Default, limitRangeDefault)
	is.Equal(l.Max, map[string]string{"cpu": "${config.tenantLimits.maxCpu}", "memory": "${config.tenantLimits.maxMemory}"})
}
