package plugin

import (
	"encoding/json"
	"os"

	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// Version is the plugin's version, in the manifest and package.json.
const Version = "0.1.0"

// ManifestID lets this plugin replace the bundled Kubernetes plugin
// (PAPERCLIP_KUBERNETES_PLUGIN_PATH).
const ManifestID = "paperclip.kubernetes-sandbox-provider"

// Manifest returns the Paperclip plugin manifest. The driver's configSchema
// is schemas/config.schema.json verbatim; the sandbox capabilities are the
// ones the worker really implements. issues.read: a release of a reusable
// lease asks the host whether the lease's issue will come back to it
// (ReleaseLease).
func Manifest() (map[string]any, error) {
	var schema map[string]any
	if err := json.Unmarshal(schemas.ConfigSchema, &schema); err != nil {
		return nil, err
	}
	delete(schema, "$schema")
	delete(schema, "$id")
	return map[string]any{
		"id":           ManifestID,
		"apiVersion":   1,
		"version":      Version,
		"displayName":  "Kubernetes Sandbox",
		"description":  "Runs Paperclip agents in Kubernetes: a tenant namespace per company (Pod Security restricted, quota, default-deny egress) and a Job or agent-sandbox Sandbox per run.",
		"author":       "paperclip-k8s",
		"categories":   []string{"automation"},
		"capabilities": []string{"environment.drivers.register", "issues.read"},
		"entrypoints":  map[string]any{"worker": "./worker.js"},
		"environmentDrivers": []any{map[string]any{
			"driverKey":              "kubernetes",
			"kind":                   "sandbox_provider",
			"displayName":            "Kubernetes",
			"description":            "Agent runs in a Kubernetes Sandbox (agent-sandbox) or Job, commands through pods/exec.",
			"configSchema":           schema,
			"supportsReusableLeases": true,
			"supportsLoginPty":       manifestSupportsLoginPty(), // loginpty.go
			"sandboxCapabilities": map[string]any{
				"reusableLeases": true,
				"nativeSyncIn":   true,
				"nativeSyncOut":  true,
				// An operator's opt-in (IncrementalSessionOutputEnv).
				"incrementalSessionOutput": incrementalSessionOutput(),
			},
		}},
	}, nil
}

// IncrementalSessionOutputEnv set to "1" or "true" where the manifest is
// printed (PAPERCLIP_K8S_INCREMENTAL_SESSION_OUTPUT=1 bash hack/build-npm.sh)
// declares sandboxCapabilities.incrementalSessionOutput: the host's ACP
// engine then runs the agent as one exec and reads its messages from that
// exec's execute.log notifications, instead of polling event files. Off by
// default: paperclip-server 2026.916.1 drops execute.log for good for every
// running command once commands of two companies overlap on the worker, and
// such a session then waits for messages that never come (README "During a
// run"). For a server whose companies never run agents at the same time.
const IncrementalSessionOutputEnv = "PAPERCLIP_K8S_INCREMENTAL_SESSION_OUTPUT"

func incrementalSessionOutput() bool {
	v := os.Getenv(IncrementalSessionOutputEnv)
	return v == "1" || v == "true"
}
