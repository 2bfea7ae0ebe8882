package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Warnings: keys that are ignored (misspelt, of other plugin versions)
// and settings that work but surprise (standard-mode egress, open CIDRs,
// a registry read as a Docker Hub namespace).

// HostOwnedKeys are config keys the Paperclip host may put in a provider
// config. They are kept as they are and never warned about.
var HostOwnedKeys = []string{
	"timeoutMs", "reuseLease", "runnerLifecycleMode", "runnerIdleTimeoutMs", "archiveOnRelease",
	"sandboxName", "workspaceRealization", "agentId", "provider", "streamRunLogs", "driver",
	"executionWorkspaceMode", "pluginId", "pluginKey", "providerMetadata", "remoteCwd",
	"shellCommand", "sandboxProviderPlugin", "sandboxLeaseAcquisition", "nativeHarnessBackup",
	"nativeWorkspaceSync",
}

// legacyKeys are keys of other versions of the reference plugin.
var legacyKeys = map[string]string{
	"runtimeImage":               "set the image of each adapter with adapters[].runtimeImage",
	"runtimeImages":              "set the image of each adapter with adapters[].runtimeImage",
	"paperclipServerPodSelector": "use paperclipServerPodLabels",
	"serverPodAppLabel":          "use paperclipServerPodLabels",
	"kubeconfigSecretRef":        "use kubeconfig (a secret reference)",
	"egressPolicy":               "egress is always allow-listed; see egressMode, egressAllowFqdns and egressAllowCidrs",
	"agentApiAccess":             "agent pods get no Kubernetes API access",
}

func (v *validation) warn() {
	c := v.cfg
	hostOwned := map[string]bool{}
	for _, k := range HostOwnedKeys {
		hostOwned[k] = true
	}
	known := slices.Sorted(maps.Keys(v.cs.props))
	for _, k := range slices.Sorted(maps.Keys(v.input)) {
		if _, ours := v.cs.props[k]; ours || hostOwned[k] {
			continue
		}
		if hint, ok := legacyKeys[k]; ok {
			v.warnings = append(v.warnings, fmt.Sprintf("key %q is not supported and is ignored: %s", k, hint))
		} else if s := closest(k, known); s != "" {
			v.warnings = append(v.warnings, fmt.Sprintf("unknown key %q is ignored; did you mean %q?", k, s))
		}
	}
	if c.InCluster && v.secret != "" && !v.bad("/kubeconfig") {
		v.warnings = append(v.warnings, "inCluster is true, so kubeconfig is ignored")
	}
	if c.ImageRegistry != "" && !v.bad("/imageRegistry") && registryIsDockerHubNamespace(c.ImageRegistry) {
		first, _, _ := strings.Cut(c.ImageRegistry, "/")
		v.warnings = append(v.warnings, fmt.Sprintf("imageRegistry %q has no '.' or ':' in %q, so container runtimes read it as a Docker Hub namespace (docker.io/%s/…); write docker.io/%s if that is meant, or the registry's full host name",
			c.ImageRegistry, first, c.ImageRegistry, c.ImageRegistry))
	}
	if !v.bad("/egressAllowCidrs") {
		for i, s := range c.EgressAllowCidrs {
			if strings.HasSuffix(s, "/0") {
				v.warnings = append(v.warnings, fmt.Sprintf("egressAllowCidrs[%d] %s allows every destination of its address family on any port, including cluster-internal addresses and cloud metadata endpoints", i, s))
			}
		}
	}
	if c.EgressMode == EgressModeStandard && v.adapter != nil && !v.bad("/egressAllowFqdns") && !v.bad("/egressAllowCidrs") {
		fqdns := canonicalFqdns(append(append([]string{}, v.adapter.AllowFqdns...), c.EgressAllowFqdns...))
		if len(fqdns) > 0 {
			list := strings.Join(fqdns, ", ")
			if len(c.EgressAllowCidrs) == 0 {
				v.warnings = append(v.warnings, fmt.Sprintf(`egressMode=standard cannot enforce FQDN-based egress rules for %s. Agent pods will get public IPv4 egress on TCP 80 and 443, with private, link-local, loopback and multicast ranges excluded. Switch egressMode to "cilium" for exact FQDN enforcement, or set egressAllowCidrs to the ranges these hosts use.`, list))
			} else {
				v.warnings = append(v.warnings, fmt.Sprintf(`egressMode=standard cannot enforce FQDN-based egress rules for %s. Agent pods can reach only the egressAllowCidrs ranges (%s), so these hosts work only if they resolve into them. Switch egressMode to "cilium" for exact FQDN enforcement.`, list, strings.Join(c.EgressAllowCidrs, ", ")))
			}
		}
	}
}

// closest returns the candidate that s most likely misspells, or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	ls := strings.ToLower(s)
	for _, c := range candidates {
		d := levenshtein(ls, strings.ToLower(c))
		limit := 2
		if len(c) >= 10 {
			limit = 3
		}
		if d <= limit && d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
