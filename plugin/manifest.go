package plugin

import (
	"encoding/json"

	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// Version is the plugin's version, in the manifest and package.json.
const Version = "0.1.0"

// ManifestID lets this plugin replace the bundled Kubernetes plugin
// (PAPERCLIP_KUBERNETES_PLUGIN_PATH).
const ManifestID = "paperclip.kubernetes-sandbox-provider"

// Manifest returns the Paperclip plugin manifest. The driver's configSchema
// is schemas/config.schema.json verbatim; the sandbox capabilities are the
// ones the worker really implements.
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
		"capabilities": []string{"environment.drivers.register"},
		"entrypoints":  map[string]any{"worker": "./worker.js"},
		"environmentDrivers": []any{map[string]any{
			"driverKey":              "kubernetes",
			"kind":                   "sandbox_provider",
			"displayName":            "Kubernetes",
			"description":            "Agent runs in a Kubernetes Sandbox (agent-sandbox) or Job, commands through pods/exec.",
			"configSchema":           schema,
			"supportsReusableLeases": true,
			"sandboxCapabilities": map[string]any{
				"reusableLeases": true,
				"nativeSyncIn":   true,
				"nativeSyncOut":  true,
				// execute.log carries a command's output while it runs: the
				// host's ACP engine then runs the agent as one streamed
				// exec instead of polling event files (README "During a run").
				"incrementalSessionOutput": true,
			},
		}},
	}, nil
}
