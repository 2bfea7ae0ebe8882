#!/usr/bin/env bash
# Runs every test of the project: units (fake dynamic client), the real
# control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok,
# exec node), and the real paperclip-server. Installs what it needs:
#   - the control-plane binaries, built from the Go module proxy into
#     ~/.cache/paperclip-k8s/kube-bin (cold: ~7.5 min on 2 cores, then cached);
#   - Node 24 and paperclipai from the npm registry into a cache dir
#     (cold: ~1.5 min, 1.6 GB, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== control-plane binaries"
KUBE_TEST_BIN=$(bash hack/build-k8s-bins.sh | tail -n 1)
export KUBE_TEST_BIN
echo "$KUBE_TEST_BIN"

echo "== Node 24 + paperclip-server"
PAPERCLIP_CACHE=$(bash hack/install-paperclip.sh | tail -n 1)
echo "$PAPERCLIP_CACHE"

echo "== gofmt, go vet"
bad=$(gofmt -l $(git ls-files '*.go' | grep -v '^hack/') 2>/dev/null || true)
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi
go vet ./...

echo "== go test"
go test -count=1 -timeout 60m "$@" ./...
