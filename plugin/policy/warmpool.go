package policy

import (
	"fmt"
	"strconv"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
)

// BackendSandboxClaim is the backend of resources/sandboxclaim.yaml: a
// SandboxClaim per run on the tenant's warm pool (warmPoolSize).
const BackendSandboxClaim = "sandboxclaim"

// checkWarmPool refuses a warm pool that leaves no room in the tenant's
// pod quota: its ready pods count against resourceQuota's pods, so a pool
// as large as the quota leaves no pod for a cold start or a refill while
// every warm pod is taken.
func (v *validation) checkWarmPool() {
	c := &v.cfg
	if c.Backend != BackendSandboxClaim || v.bad("/warmPoolSize") || v.bad("/resourceQuota") || c.WarmPoolSize == 0 {
		return
	}
	hard, ok := jsonpointer.Resolve(v.m, "/resourceQuota/pods").(string)
	if !ok {
		return
	}
	pods, err := strconv.Atoi(hard)
	if err != nil || c.WarmPoolSize < pods {
		return
	}
	v.add("/warmPoolSize", fmt.Sprintf("%d%s is not smaller than the tenant ResourceQuota's pods %q%s: the warm pool's ready pods count against it and would leave no pod for a run's refill or cold start; lower warmPoolSize, or raise resourceQuota[\"pods\"]",
		c.WarmPoolSize, v.defaultNote("/warmPoolSize"), hard, v.defaultNote("/resourceQuota")))
}
