# shellcheck shell=sh
# sync-in.sh receives the upload archive on stdin and moves each mapping
# into place. Args: root, staging id, then per mapping: kind ("file" or
# "directory"), path relative to the root ("." only for a directory), mode
# (octal, or "-" for the archive's). The archive holds mapping i as entry
# "i" (a file, or a directory with its tree) and ends with the entry
# $_PC_END_ENTRY, written by the host only after every other entry: its
# absence means the stream was cut short.
#
# Every target's parent is checked (and created) before anything is moved,
# so a refused mapping leaves all targets as they were. A file replaces the
# target file (rename, so never a truncated file); a directory replaces the
# target directory as a whole (the old one is moved into the staging
# directory and removed with it), as the host's own fallback (rm -rf, then
# untar) does. The root itself as a directory target has its entries
# replaced (except in-flight staging directories).

# shellcheck source=common.sh
. ./common.sh

_pc_stage9 "$2"
shift 2
# tar's warnings (e.g. one per file when the clocks differ) go to a file,
# not to the capped stderr; its tail is shown when tar fails.
if ! (umask 0 && exec tar -xof - -C /proc/self/fd/9 2>/proc/self/fd/9/tar.err); then
	tail -c 2000 /proc/self/fd/9/tar.err >&2 2>/dev/null
	_pc_fail "$_PC_E_TAR" - "extracting the upload archive failed"
fi
[ -f "/proc/self/fd/9/$_PC_END_ENTRY" ] || _pc_fail "$_PC_E_TAR" - "the upload archive is incomplete (the stream ended early)"
# mv -T (GNU, recent BusyBox) never moves INTO a directory or a link to one
# that appeared at the destination: use it when mv has it.
_pc_T=
if mv -fT "/proc/self/fd/9/$_PC_END_ENTRY" /proc/self/fd/9/paperclip-sync-probe 2>/dev/null; then _pc_T=-T; fi
# _pc_place check|move MAPPINGS...: "check" confines (and creates) every
# target's parent first, so a refused mapping leaves every target as it was;
# "move" then places each mapping.
_pc_place() {
	_pc_pass=$1
	shift
	_pc_i=0
	while [ $# -ge 3 ]; do
		_pc_kind=$1 _pc_rel=$2 _pc_mode=$3
		shift 3
		_pc_src=/proc/self/fd/9/$_pc_i
		if [ "$_pc_rel" = . ]; then
			[ "$_pc_kind" = directory ] || _pc_fail "$_PC_E_MOVE" "$_pc_i" "a file cannot replace the remote root"
			_pc_dir8 "$_pc_i" "$_pc_root" mkdir
		else
			_pc_dst=$_pc_base/$_pc_rel
			_pc_parent=${_pc_dst%/*}
			[ -n "$_pc_parent" ] || _pc_parent=/
			_pc_dir8 "$_pc_i" "$_pc_parent" mkdir
		fi
		if [ "$_pc_pass" = move ]; then
			_pc_move
		fi
		exec 8<&-
		_pc_i=$((_pc_i + 1))
	done
}

# _pc_move: place mapping _pc_i (its parent, or the root, pinned as fd 8).
_pc_move() {
	[ -e "$_pc_src" ] || _pc_fail "$_PC_E_TAR" "$_pc_i" "entry $_pc_i is missing from the upload archive"
	if [ "$_pc_mode" != - ]; then
		chmod "$_pc_mode" "$_pc_src" || _pc_fail "$_PC_E_CHMOD" "$_pc_i" "chmod $_pc_mode failed"
	fi
	if [ "$_pc_rel" = . ]; then
		for _pc_e in /proc/self/fd/8/* /proc/self/fd/8/.[!.]* /proc/self/fd/8/..?*; do
			[ -e "$_pc_e" ] || [ -L "$_pc_e" ] || continue
			case ${_pc_e##*/} in "$_PC_STAGE_PREFIX"*) continue ;; esac
			rm -rf "$_pc_e" || _pc_fail "$_PC_E_MOVE" "$_pc_i" "cannot remove $_pc_root/${_pc_e##*/}"
		done
		for _pc_e in "$_pc_src"/* "$_pc_src"/.[!.]* "$_pc_src"/..?*; do
			[ -e "$_pc_e" ] || [ -L "$_pc_e" ] || continue
			mv -f $_pc_T "$_pc_e" "/proc/self/fd/8/${_pc_e##*/}" || _pc_fail "$_PC_E_MOVE" "$_pc_i" "cannot move ${_pc_e##*/} into $_pc_root"
		done
		return
	fi
	_pc_name=/proc/self/fd/8/${_pc_dst##*/}
	if [ -L "$_pc_name" ]; then
		# A link at the target is replaced, never followed.
		rm -f "$_pc_name" || _pc_fail "$_PC_E_MOVE" "$_pc_i" "cannot remove the link $_pc_dst"
	elif [ "$_pc_kind" = directory ]; then
		if [ -e "$_pc_name" ]; then
			mv -f $_pc_T "$_pc_name" "/proc/self/fd/9/old-$_pc_i" || _pc_fail "$_PC_E_MOVE" "$_pc_i" "cannot move the old $_pc_dst aside"
		fi
	elif [ -d "$_pc_name" ]; then
		_pc_fail "$_PC_E_MOVE" "$_pc_i" "the target $_pc_dst is a directory"
	fi
	mv -f $_pc_T "$_pc_src" "$_pc_name" || _pc_fail "$_PC_E_MOVE" "$_pc_i" "cannot move the upload into $_pc_dst"
}

_pc_place check "$@"
_pc_place move "$@"
