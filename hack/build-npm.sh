#!/usr/bin/env bash
# Builds the Paperclip plugin package of paperclip-k8s:
#
#   bash hack/build-npm.sh [outdir]      (default outdir: npm/ of this repo)
#
# writes into outdir
#
#   bin/paperclip-k8s-<platform>-<arch>  the Go worker, CGO_ENABLED=0, named
#                                        with Node's process.platform/arch
#                                        (linux-x64, linux-arm64, darwin-arm64…)
#   package.json                         @paperclip-k8s/plugin-kubernetes, the
#                                        version of `paperclip-k8s version`
#   manifest.js                          `export default <paperclip-k8s manifest>;`
#   worker.js                            copied from npm/worker.js: a Node
#                                        launcher that execve()s the binary
#   dist/manifest.js                     re-exports manifest.js: paperclip-server
#                                        auto-installs the package named by
#                                        PAPERCLIP_KUBERNETES_PLUGIN_PATH only
#                                        when <path>/dist/manifest.js exists
#
# and prints the absolute outdir on its last stdout line. Then:
#
#   paperclipai plugin install <outdir> --local
#
# The target platform is `go env GOOS GOARCH`, so GOOS=darwin GOARCH=arm64
# bash hack/build-npm.sh adds a darwin-arm64 binary next to the ones already
# in outdir (the launcher picks the one for the platform it runs on). The
# generated files in npm/ are git-ignored (npm/.gitignore); package.json's
# "files" list keeps them in `npm pack` tarballs anyway.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/npm}
mkdir -p "$out/bin"
out=$(cd "$out" && pwd)
cd "$root"

goos=$(go env GOOS)
goarch=$(go env GOARCH)
case $goos in
windows) platform=win32 ;;
*) platform=$goos ;; # linux, darwin, freebsd, … are the same in Node
esac
case $goarch in
amd64) arch=x64 ;;
386) arch=ia32 ;;
*) arch=$goarch ;; # arm64, arm, ppc64, s390x, riscv64, loong64 are the same in Node
esac
bin=$out/bin/paperclip-k8s-$platform-$arch

echo "building $bin (GOOS=$goos GOARCH=$goarch)" >&2
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin.tmp" ./cmd/paperclip-k8s
mv -f "$bin.tmp" "$bin"

# `version` and `manifest` come from a binary for this machine.
host=$bin
tmp=
if [ "$goos/$goarch" != "$(env -u GOOS -u GOARCH go env GOOS)/$(env -u GOOS -u GOARCH go env GOARCH)" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	host=$tmp/paperclip-k8s
	env -u GOOS -u GOARCH CGO_ENABLED=0 go build -o "$host" ./cmd/paperclip-k8s
fi
version=$("$host" version)
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?$ ]]; then
	echo "build-npm: '$host version' printed '$version', not a semver version" >&2
	exit 1
fi
manifest=$("$host" manifest)

cat >"$out/package.json.tmp" <<EOF
{
  "name": "@paperclip-k8s/plugin-kubernetes",
  "version": "$version",
  "description": "Paperclip sandbox provider that runs agents in Kubernetes (Go worker).",
  "type": "module",
  "engines": { "node": ">=22.15.0" },
  "files": ["bin/", "dist/", "manifest.js", "worker.js"],
  "paperclipPlugin": { "manifest": "./manifest.js", "worker": "./worker.js" }
}
EOF
printf 'export default %s;\n' "$manifest" >"$out/manifest.js.tmp"
mkdir -p "$out/dist"
printf '// The bundled-plugin route (PAPERCLIP_KUBERNETES_PLUGIN_PATH) checks for this file.\nexport { default } from "../manifest.js";\n' >"$out/dist/manifest.js"
mv -f "$out/package.json.tmp" "$out/package.json"
mv -f "$out/manifest.js.tmp" "$out/manifest.js"
if [ "$out" != "$root/npm" ]; then
	cp "$root/npm/worker.js" "$out/worker.js.tmp"
	mv -f "$out/worker.js.tmp" "$out/worker.js"
fi
echo "$out"
