# shellcheck shell=sh
# sync-out-files.sh copies each source file (through a pinned descriptor,
# after checking it resolves below the root and is a regular file) into the
# staging directory as "i" and writes a tar of 0..n-1 on stdout. Args:
# root, staging id, then the sources' paths relative to the root. A source
# that is a symbolic link is followed only when it resolves below the root.

# shellcheck source=common.sh
. ./common.sh

_pc_stage9 "$2"
shift 2
_pc_i=0
for _pc_rel in "$@"; do
	_pc_src=$_pc_base/$_pc_rel
	_pc_parent=${_pc_src%/*}
	[ -n "$_pc_parent" ] || _pc_parent=/
	_pc_dir8 "$_pc_i" "$_pc_parent" nomkdir
	_pc_f=/proc/self/fd/8/${_pc_src##*/}
	[ -e "$_pc_f" ] || _pc_fail "$_PC_E_SOURCE" "$_pc_i" "$_pc_src does not exist"
	command exec 7<"$_pc_f" || _pc_fail "$_PC_E_OPEN" "$_pc_i" "cannot open $_pc_src"
	_pc_r=$(_pc_resolve /proc/self/fd/7) || _pc_fail "$_PC_E_OPEN" "$_pc_i" "cannot resolve /proc/self/fd/7 (is /proc mounted?)"
	case $_pc_r in "$_pc_base"/*) ;; *) _pc_fail "$_PC_E_ESCAPE" "$_pc_i" "$_pc_src resolves to $_pc_r, outside the remote root $_pc_root" ;; esac
	[ -f /proc/self/fd/7 ] || _pc_fail "$_PC_E_SOURCE" "$_pc_i" "$_pc_src is not a regular file"
	cp /proc/self/fd/7 "/proc/self/fd/9/$_pc_i" || _pc_fail "$_PC_E_TAR" "$_pc_i" "cannot copy $_pc_src"
	exec 7<&- 8<&-
	_pc_i=$((_pc_i + 1))
done
cd /proc/self/fd/9 || _pc_fail "$_PC_E_OPEN" - "cannot enter the staging directory"
_pc_n=$_pc_i
set --
_pc_i=0
while [ "$_pc_i" -lt "$_pc_n" ]; do
	set -- "$@" "$_pc_i"
	_pc_i=$((_pc_i + 1))
done
tar -cf - -- "$@" || _pc_fail "$_PC_E_TAR" - "tar failed"
