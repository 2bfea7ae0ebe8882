# shellcheck shell=sh
# sync-out-dir.sh writes a tar of the source directory's entries (top-level
# names, dotfiles included, no "." entry) on stdout, or nothing when it is
# empty. Args: root, the directory's path relative to the root ("." for the
# root), "1" to follow symbolic links (tar -h) or "0", then tar's
# --exclude=PATTERN options (dropped when tar lacks --exclude: the host
# filters the entries it receives with the same patterns anyway).

# shellcheck source=common.sh
. ./common.sh

if [ "$2" = . ]; then _pc_d=$_pc_root; else _pc_d=$_pc_base/$2; fi
_pc_follow=$3
shift 3
_pc_dir8 0 "$_pc_d" nomkdir
cd /proc/self/fd/8 || _pc_fail "$_PC_E_OPEN" 0 "cannot enter $_pc_d"
_pc_has_exclude || set --
set -- "$@" --
_pc_n=0
for _pc_e in * .[!.]* ..?*; do
	[ -e "$_pc_e" ] || [ -L "$_pc_e" ] || continue
	set -- "$@" "$_pc_e"
	_pc_n=$((_pc_n + 1))
done
[ "$_pc_n" -gt 0 ] || exit 0
if [ "$_pc_follow" = 1 ]; then
	tar -chf - "$@" || _pc_fail "$_PC_E_TAR" 0 "tar failed"
else
	tar -cf - "$@" || _pc_fail "$_PC_E_TAR" 0 "tar failed"
fi
