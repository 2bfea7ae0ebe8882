package paperclip

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// PluginPackage is a local-path plugin package for InstallLocalPlugin.
type PluginPackage struct {
	// Name is the npm package name written to package.json, e.g.
	// "@paperclip-k8s/plugin-e2e". Explicit installs do not check it.
	Name string
	// Manifest is a PaperclipPluginManifestV1. It is written as an ESM
	// manifest.js ("export default {…}"): the host import()s the manifest,
	// so JSON does not work. Pitfalls: categories ⊆ connector|workspace|
	// automation|ui; environmentDrivers[].configSchema is required; a driver
	// for runs needs kind "sandbox_provider". If entrypoints.worker is unset
	// it becomes "./worker.js".
	Manifest map[string]any
	// WorkerJS is the source of worker.js (an ES module). The host can only
	// fork() Node entrypoints; for a native worker use ExecveLauncherJS.
	WorkerJS string
}

// WritePluginPackage writes package.json, manifest.js and worker.js into dir
// (created if missing). Other files (e.g. bin/<go binary>) are the caller's.
func WritePluginPackage(dir string, p PluginPackage) error {
	if p.Name == "" || p.Manifest == nil || p.WorkerJS == "" {
		return errors.New("WritePluginPackage: Name, Manifest and WorkerJS are required")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	m := make(map[string]any, len(p.Manifest)+1)
	for k, v := range p.Manifest {
		m[k] = v
	}
	if _, ok := m["entrypoints"]; !ok {
		m["entrypoints"] = map[string]any{"worker": "./worker.js"}
	}
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	pkg, err := json.MarshalIndent(map[string]any{
		"name": p.Name, "version": fmt.Sprint(m["version"]), "private": true, "type": "module",
		"paperclipPlugin": map[string]any{"manifest": "./manifest.js", "worker": "./worker.js"},
	}, "", "  ")
	if err != nil {
		return err
	}
	files := map[string]string{
		"package.json": string(pkg) + "\n",
		"manifest.js":  "export default " + string(manifest) + ";\n",
		"worker.js":    p.WorkerJS,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ExecveLauncherJS returns a worker.js that replaces the forked Node process
// with the native binary at binRel (relative to the package dir) through
// process.execve: same PID and the same stdio sockets, so the host's NDJSON
// framing and its signals reach the binary directly. The binary gets the
// worker env unchanged: no HOME (see the package doc).
func ExecveLauncherJS(binRel string) string {
	rel, _ := json.Marshal(filepath.ToSlash(binRel))
	return `import path from "node:path";
import { fileURLToPath } from "node:url";
const bin = path.join(path.dirname(fileURLToPath(import.meta.url)), ` + string(rel) + `);
process.execve(bin, [bin, ...process.argv.slice(2)], process.env);
`
}
