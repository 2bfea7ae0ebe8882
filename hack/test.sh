#!/usr/bin/env bash
# Runs every check and test of the project: gofmt, go vet, staticcheck,
# the sync's pod scripts through shellcheck, units (fake dynamic client), the real
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

# apt_install PACKAGE: installs a Debian package when running as root.
apt_updated=
apt_install() {
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		if [ -z "$apt_updated" ]; then apt-get update -qq && apt_updated=1; fi
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
	else
		return 1
	fi
}

echo "== busybox (the sync scripts are also tested with BusyBox's sh and tar)"
if ! command -v busybox >/dev/null 2>&1; then
	apt_install busybox-static ||
		echo "busybox is missing: install busybox-static (apt) to test the sync scripts with BusyBox"
fi
command -v busybox || true

echo "== shellcheck (the sync's pod scripts, the project's own scripts)"
if ! command -v shellcheck >/dev/null 2>&1; then
	apt_install shellcheck || { echo "shellcheck is missing: install shellcheck (apt)"; exit 1; }
fi
shellcheck --version | sed -n 2p
# -x -P SCRIPTDIR: each script's ". ./common.sh" (what it is sent with) is followed.
shellcheck -x -P SCRIPTDIR plugin/filesync/scripts/*.sh
shellcheck hack/*.sh .ci/run

echo "== gofmt, go vet"
mapfile -t gofiles < <(git ls-files '*.go' | grep -v '^hack/')
bad=$(gofmt -l "${gofiles[@]}" 2>/dev/null || true)
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi
go vet ./...

echo "== staticcheck"
STATICCHECK_VERSION=v0.8.2 # pinned (a newer one may add checks); runs with Go 1.26
go run "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" ./...

echo "== go test"
# The packages that start paperclip-server run one at a time: each server's
# embedded Postgres picks its port when it starts, and two servers started
# at once by parallel test binaries can race for the same one.
mapfile -t e2e < <(go list ./e2e/...)
mapfile -t rest < <(go list ./... | grep -vxF -f <(printf '%s\n' "${e2e[@]}"))
go test -count=1 -timeout 60m "$@" "${rest[@]}"
go test -count=1 -timeout 60m -p 1 "$@" "${e2e[@]}"
