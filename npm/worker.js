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
process.execve(bin, [bin, "worker"], env);
