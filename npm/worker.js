// Paperclip forks plugin workers with its own Node binary, so the worker
// entrypoint must be JavaScript. This launcher replaces the Node process with
// the Go worker for this platform (process.execve: same PID, same stdio, so
// the host's NDJSON pipes and signals reach the binary directly). The host
// scrubs the worker env down to a few variables, without HOME: set it from
// the passwd entry so the worker has a home like any other process.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
const bin = path.join(path.dirname(fileURLToPath(import.meta.url)), "bin", `paperclip-k8s-${process.platform}-${process.arch}`);
if (!fs.existsSync(bin)) {
  process.stderr.write(`paperclip-k8s: no worker binary for ${process.platform}-${process.arch} at ${bin}; build the package with hack/build-npm.sh\n`);
  process.exit(1);
}
const env = { ...process.env };
if (!env.HOME) { try { env.HOME = os.userInfo().homedir; } catch {} }
// The host gives a worker none of its own environment's PAPERCLIP_K8S_*
// variables, so the operator's settings live in paperclip-k8s.env next to
// this file (KEY=VALUE lines, # comments): only PAPERCLIP_K8S_* and
// POD_NAMESPACE are taken. A company admin cannot write here.
const envFile = path.join(path.dirname(fileURLToPath(import.meta.url)), "paperclip-k8s.env");
if (fs.existsSync(envFile)) {
  for (const [i, raw] of fs.readFileSync(envFile, "utf8").split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    const key = eq > 0 ? line.slice(0, eq).trim() : "";
    if (!/^(PAPERCLIP_K8S_[A-Z0-9_]+|POD_NAMESPACE)$/.test(key)) {
      process.stderr.write(`paperclip-k8s: ${envFile}:${i + 1}: ignored (want PAPERCLIP_K8S_*=value or POD_NAMESPACE=value)\n`);
      continue;
    }
    env[key] = line.slice(eq + 1).trim();
  }
}
process.execve(bin, [bin, "worker"], env);
