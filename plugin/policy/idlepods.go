package policy

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// WithBackendIdlePods gives Validate what each loaded backend's file
// declares under backend.idlePods, backend name → config pointers: the
// counts of pods the backend keeps running without a run. Without it
// Validate uses what the shipped resources/ files declare.
func WithBackendIdlePods(idle map[string][]string) Option {
	return func(o *options) { o.idlePods = idle }
}

// shippedIdlePods are the idlePods the files of resources/ declare.
var shippedIdlePods = sync.OnceValue(func() map[string][]string {
	out := map[string][]string{}
	for _, h := range shippedHeads() {
		if len(h.Backend.IdlePods) > 0 {
			out[h.Name] = h.Backend.IdlePods
		}
	}
	return out
})

// checkIdlePods refuses a config whose backend keeps, without a run, as
// many pods as the tenant's pod quota allows or more (the sum of the config
// fields its file lists in backend.idlePods: a warm pool, standby leases):
// they count against resourceQuota's pods and would leave none for a run's
// refill or cold start.
func (v *validation) checkIdlePods(idle map[string][]string) {
	ptrs := idle[v.cfg.Backend]
	if len(ptrs) == 0 || v.bad("/backend") || v.bad("/resourceQuota") {
		return
	}
	sum := 0
	var parts []string
	for _, p := range ptrs {
		if v.bad(p) {
			return
		}
		n, ok := int64(0), false
		switch x := jsonpointer.Resolve(v.m, p).(type) {
		case json.Number:
			i, err := x.Int64()
			n, ok = i, err == nil
		case float64:
			n, ok = int64(x), true
		case int64:
			n, ok = x, true
		case int:
			n, ok = int64(x), true
		}
		if !ok || n == 0 {
			continue
		}
		sum += int(n)
		parts = append(parts, fmt.Sprintf("%s %d%s", strings.TrimPrefix(p, "/"), n, v.defaultNote(p)))
	}
	hard, ok := jsonpointer.Resolve(v.m, "/resourceQuota/pods").(string)
	if !ok || sum == 0 {
		return
	}
	pods, err := strconv.Atoi(hard)
	if err != nil || sum < pods {
		return
	}
	fields := make([]string, 0, len(parts))
	for _, p := range parts {
		fields = append(fields, strings.Fields(p)[0])
	}
	v.add(ptrs[0], fmt.Sprintf("the pods backend %q keeps without a run (%s) are not fewer than the tenant ResourceQuota's pods %q%s: they count against it and would leave no pod for a run's refill or cold start; lower %s, or raise resourceQuota[\"pods\"]",
		v.cfg.Backend, strings.Join(parts, " + "), hard, v.defaultNote("/resourceQuota"), strings.Join(fields, " or ")))
}
