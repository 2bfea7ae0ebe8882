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

echo "== busybox (the sync scripts are also tested with BusyBox's sh and tar)"
if ! command -v busybox >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
	else
		echo "busybox is missing: install busybox-static (apt) to test the sync scripts with BusyBox"
	fi
fi
command -v busybox || true

echo "== gofmt, go vet"
bad=$(gofmt -l $(git ls-files '*.go' | grep -v '^hack/') 2>/dev/null || true)
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi
go vet ./...

echo "== go test"
go test -count=1 -timeout 60m "$@" ./...
