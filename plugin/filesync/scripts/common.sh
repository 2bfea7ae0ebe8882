# shellcheck shell=sh
# The start of every pod script (each one includes it with its line
# ". ./common.sh", which script.go replaces with this file's text). Ahead of
# it come the script's arguments (a `set --` line) and the constants Go
# defines (script.go: the _PC_E_* exit codes, _PC_FAIL_PREFIX,
# _PC_END_ENTRY, _PC_STAGE_PREFIX).
#
# It defines _pc_fail, _pc_resolve, _pc_check_real, _pc_has_exclude,
# _pc_dir8 and _pc_stage9, and sets _pc_root (the resolved remote root, $1)
# and _pc_base (the prefix of paths below it: "" when the root is "/").
set -u
_pc_fail() {
	_pc_code=$1 _pc_idx=$2
	shift 2
	printf '%s%s:%s: %s\n' "$_PC_FAIL_PREFIX" "$_pc_code" "$_pc_idx" "$*" >&2
	exit "$_pc_code"
}
if command -v realpath >/dev/null 2>&1; then
	_pc_resolve() { realpath "$1" 2>/dev/null; }
elif command -v readlink >/dev/null 2>&1; then
	_pc_resolve() { readlink -f "$1" 2>/dev/null; }
else
	_pc_fail "$_PC_E_NO_RESOLVER" - "neither realpath nor readlink is available in the image"
fi
case $1 in /*) ;; *) _pc_fail "$_PC_E_ROOT" - "the remote root $1 is not an absolute path" ;; esac
[ -d "$1" ] || mkdir -p "$1" || _pc_fail "$_PC_E_ROOT" - "cannot create the remote root $1"
_pc_root=$(_pc_resolve "$1") || _pc_fail "$_PC_E_ROOT" - "cannot resolve the remote root $1"
if [ -z "$_pc_root" ] || [ ! -d "$_pc_root" ]; then _pc_fail "$_PC_E_ROOT" - "the remote root $1 is not a directory"; fi
if [ "$_pc_root" = / ]; then _pc_base=; else _pc_base=$_pc_root; fi

# _pc_check_real IDX PATH: the existing PATH must resolve to itself.
_pc_check_real() {
	_pc_r=$(_pc_resolve "$2") || _pc_fail "$_PC_E_ESCAPE" "$1" "cannot resolve $2"
	[ "$_pc_r" = "$2" ] || _pc_fail "$_PC_E_ESCAPE" "$1" "$2 resolves to $_pc_r: a symbolic link on the way (refused)"
}

# _pc_has_exclude: whether tar takes --exclude (BusyBox may not; the host
# filters the entries again anyway).
_pc_has_exclude() {
	case $(tar --help 2>&1) in *--exclude*) return 0 ;; esac
	return 1
}

# _pc_dir8 IDX DIR mkdir|nomkdir: check DIR (below the root) and each of its
# existing ancestors for symbolic links, create it if asked, and pin it as fd 8.
_pc_dir8() {
	_pc_a=$2
	while [ ! -e "$_pc_a" ] && [ ! -L "$_pc_a" ]; do
		_pc_a=${_pc_a%/*}
		[ -n "$_pc_a" ] || _pc_a=/
	done
	case $_pc_a/ in "$_pc_base"/*) ;; *) _pc_fail "$_PC_E_ESCAPE" "$1" "$_pc_a is outside the remote root $_pc_root" ;; esac
	_pc_check_real "$1" "$_pc_a"
	if [ "$_pc_a" != "$2" ]; then
		[ "$3" = mkdir ] || _pc_fail "$_PC_E_SOURCE" "$1" "$2 does not exist"
		mkdir -p "$2" || _pc_fail "$_PC_E_MKDIR" "$1" "cannot create the directory $2"
	fi
	if [ ! -d "$2" ] || [ -L "$2" ]; then _pc_fail "$_PC_E_MKDIR" "$1" "$2 is not a directory"; fi
	command exec 8<"$2" || _pc_fail "$_PC_E_OPEN" "$1" "cannot open the directory $2"
	_pc_r=$(_pc_resolve /proc/self/fd/8) || _pc_fail "$_PC_E_OPEN" "$1" "cannot resolve /proc/self/fd/8 (is /proc mounted?)"
	[ "$_pc_r" = "$2" ] || _pc_fail "$_PC_E_ESCAPE" "$1" "$2 resolves to $_pc_r: a symbolic link on the way (refused)"
}

# _pc_stage9 ID: create the private staging directory <root>/<_PC_STAGE_PREFIX>ID
# (removed on exit) and pin it as fd 9.
_pc_stage9() {
	_pc_stage=$_pc_base/$_PC_STAGE_PREFIX$1
	trap 'rm -rf "$_pc_stage"' EXIT
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir -m 700 "$_pc_stage" || _pc_fail "$_PC_E_MKDIR" - "cannot create the staging directory $_pc_stage"
	command exec 9<"$_pc_stage" || _pc_fail "$_PC_E_OPEN" - "cannot open the staging directory $_pc_stage"
	_pc_r=$(_pc_resolve /proc/self/fd/9) || _pc_fail "$_PC_E_OPEN" - "cannot resolve /proc/self/fd/9 (is /proc mounted?)"
	[ "$_pc_r" = "$_pc_stage" ] || _pc_fail "$_PC_E_ESCAPE" - "the staging directory $_pc_stage was replaced"
}
