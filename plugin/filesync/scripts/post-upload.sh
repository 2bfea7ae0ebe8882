# shellcheck shell=sh
# post-upload.sh runs one post-upload command, verbatim, with /bin/sh -c in
# its working directory (checked and pinned like every other directory).
# Args: root, the directory's path relative to the root ("." for the root),
# the command.

# shellcheck source=common.sh
. ./common.sh

if [ "$2" = . ]; then _pc_d=$_pc_root; else _pc_d=$_pc_base/$2; fi
_pc_dir8 - "$_pc_d" nomkdir
cd -P /proc/self/fd/8 || _pc_fail "$_PC_E_OPEN" - "cannot enter $_pc_d"
exec 8<&-
PWD=$_pc_d
export PWD
exec /bin/sh -c "$3"
