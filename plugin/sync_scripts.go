package plugin

// The pod side of environmentSyncIn/environmentSyncOut: POSIX sh scripts,
// sent with their arguments ("$1"...) on stdin ahead of the data and run by
// a short bootstrap in the exec's argv (syncCommand in sync.go). They need,
// in the image: sh, dd, tar, mkdir, mv, rm, chmod, cp, realpath or
// readlink -f, and /proc/self/fd (GNU coreutils/tar and BusyBox both do);
// tail only to show tar's last words when it fails.
//
// Paths are never spliced into the scripts' code: they are positional
// parameters (single-quoted words of a `set --` line). The host passes the
// remote root (as configured) and, for each mapping, its path RELATIVE to
// that root ("." is the root itself), lexically checked on the host (no
// "..", no absolute escape). The scripts resolve the root once (realpath)
// and then require every directory they use below it to resolve to exactly
// its own path: no symbolic link anywhere between the root and the entry (a
// link inside the workspace is refused too, not only one leading outside).
// Each such directory is opened and pinned as a file descriptor, re-checked
// through /proc/self/fd/N, and used only through that pin, so a directory
// swapped for a link after the check cannot redirect a write.
//
// Failures print one line "paperclip-k8s-sync:<code>:<mapping index|->: <detail>"
// on stderr and exit with <code> (syncExitReasons in sync.go says what each
// one means):
//
//	40 no realpath/readlink   41 the remote root is unusable   42 escape
//	43 tar failed/incomplete  44 move into place failed        45 source missing or not a regular file
//	46 mkdir failed           47 open (pin) failed             48 chmod failed
//	125 (the bootstrap) the script could not be read from stdin

// syncPreamble defines _pc_fail, _pc_resolve, _pc_check_real and _pc_dir8,
// and sets _pc_root (the resolved remote root, $1) and _pc_base (the prefix
// of paths below it: "" when the root is "/").
const syncPreamble = `set -u
_pc_fail() {
	_pc_code=$1 _pc_idx=$2
	shift 2
	printf 'paperclip-k8s-sync:%s:%s: %s\n' "$_pc_code" "$_pc_idx" "$*" >&2
	exit "$_pc_code"
}
if command -v realpath >/dev/null 2>&1; then
	_pc_resolve() { realpath "$1" 2>/dev/null; }
elif command -v readlink >/dev/null 2>&1; then
	_pc_resolve() { readlink -f "$1" 2>/dev/null; }
else
	_pc_fail 40 - "neither realpath nor readlink is available in the image"
fi
case $1 in /*) ;; *) _pc_fail 41 - "the remote root $1 is not an absolute path" ;; esac
[ -d "$1" ] || mkdir -p "$1" || _pc_fail 41 - "cannot create the remote root $1"
_pc_root=$(_pc_resolve "$1") || _pc_fail 41 - "cannot resolve the remote root $1"
[ -n "$_pc_root" ] && [ -d "$_pc_root" ] || _pc_fail 41 - "the remote root $1 is not a directory"
if [ "$_pc_root" = / ]; then _pc_base=; else _pc_base=$_pc_root; fi

# _pc_check_real IDX PATH: the existing PATH must resolve to itself.
_pc_check_real() {
	_pc_r=$(_pc_resolve "$2") || _pc_fail 42 "$1" "cannot resolve $2"
	[ "$_pc_r" = "$2" ] || _pc_fail 42 "$1" "$2 resolves to $_pc_r: a symbolic link on the way (refused)"
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
	case $_pc_a/ in "$_pc_base"/*) ;; *) _pc_fail 42 "$1" "$_pc_a is outside the remote root $_pc_root" ;; esac
	_pc_check_real "$1" "$_pc_a"
	if [ "$_pc_a" != "$2" ]; then
		[ "$3" = mkdir ] || _pc_fail 45 "$1" "$2 does not exist"
		mkdir -p "$2" || _pc_fail 46 "$1" "cannot create the directory $2"
	fi
	[ -d "$2" ] && [ ! -L "$2" ] || _pc_fail 46 "$1" "$2 is not a directory"
	command exec 8<"$2" || _pc_fail 47 "$1" "cannot open the directory $2"
	_pc_r=$(_pc_resolve /proc/self/fd/8) || _pc_fail 47 "$1" "cannot resolve /proc/self/fd/8 (is /proc mounted?)"
	[ "$_pc_r" = "$2" ] || _pc_fail 42 "$1" "$2 resolves to $_pc_r: a symbolic link on the way (refused)"
}

# _pc_stage9 ID: create the private staging directory <root>/.paperclip-upload-ID
# (removed on exit) and pin it as fd 9.
_pc_stage9() {
	_pc_stage=$_pc_base/.paperclip-upload-$1
	trap 'rm -rf "$_pc_stage"' EXIT
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir -m 700 "$_pc_stage" || _pc_fail 46 - "cannot create the staging directory $_pc_stage"
	command exec 9<"$_pc_stage" || _pc_fail 47 - "cannot open the staging directory $_pc_stage"
	_pc_r=$(_pc_resolve /proc/self/fd/9) || _pc_fail 47 - "cannot resolve /proc/self/fd/9 (is /proc mounted?)"
	[ "$_pc_r" = "$_pc_stage" ] || _pc_fail 42 - "the staging directory $_pc_stage was replaced"
}
`

// syncInScript receives the upload archive on stdin and moves each mapping
// into place. Args: root, staging id, then per mapping: kind ("file" or
// "directory"), path relative to the root ("." only for a directory), mode
// (octal, or "-" for the archive's). The archive holds mapping i as entry
// "i" (a file, or a directory with its tree) and ends with the entry
// "paperclip-sync-end", written by the host only after every other entry:
// its absence means the stream was cut short.
//
// Every target's parent is checked (and created) before anything is moved,
// so a refused mapping leaves all targets as they were. A file replaces the
// target file (rename, so never a truncated file); a
// directory replaces the target directory as a whole (the old one is moved
// into the staging directory and removed with it), as the host's own
// fallback (rm -rf, then untar) does. The root itself as a directory target
// has its entries replaced (except in-flight .paperclip-upload-* stages).
const syncInScript = syncPreamble + `
_pc_stage9 "$2"
shift 2
# tar's warnings (e.g. one per file when the clocks differ) go to a file,
# not to the capped stderr; its tail is shown when tar fails.
if ! (umask 0 && exec tar -xof - -C /proc/self/fd/9 2>/proc/self/fd/9/tar.err); then
	tail -c 2000 /proc/self/fd/9/tar.err >&2 2>/dev/null
	_pc_fail 43 - "extracting the upload archive failed"
fi
[ -f /proc/self/fd/9/paperclip-sync-end ] || _pc_fail 43 - "the upload archive is incomplete (the stream ended early)"
# mv -T (GNU, recent BusyBox) never moves INTO a directory or a link to one
# that appeared at the destination: use it when mv has it.
_pc_T=
if mv -fT /proc/self/fd/9/paperclip-sync-end /proc/self/fd/9/paperclip-sync-probe 2>/dev/null; then _pc_T=-T; fi
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
			[ "$_pc_kind" = directory ] || _pc_fail 44 "$_pc_i" "a file cannot replace the remote root"
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
	[ -e "$_pc_src" ] || _pc_fail 43 "$_pc_i" "entry $_pc_i is missing from the upload archive"
	if [ "$_pc_mode" != - ]; then
		chmod "$_pc_mode" "$_pc_src" || _pc_fail 48 "$_pc_i" "chmod $_pc_mode failed"
	fi
	if [ "$_pc_rel" = . ]; then
		for _pc_e in /proc/self/fd/8/* /proc/self/fd/8/.[!.]* /proc/self/fd/8/..?*; do
			[ -e "$_pc_e" ] || [ -L "$_pc_e" ] || continue
			case ${_pc_e##*/} in .paperclip-upload-*) continue ;; esac
			rm -rf "$_pc_e" || _pc_fail 44 "$_pc_i" "cannot remove $_pc_root/${_pc_e##*/}"
		done
		for _pc_e in "$_pc_src"/* "$_pc_src"/.[!.]* "$_pc_src"/..?*; do
			[ -e "$_pc_e" ] || [ -L "$_pc_e" ] || continue
			mv -f $_pc_T "$_pc_e" "/proc/self/fd/8/${_pc_e##*/}" || _pc_fail 44 "$_pc_i" "cannot move ${_pc_e##*/} into $_pc_root"
		done
		return
	fi
	_pc_name=/proc/self/fd/8/${_pc_dst##*/}
	if [ -L "$_pc_name" ]; then
		# A link at the target is replaced, never followed.
		rm -f "$_pc_name" || _pc_fail 44 "$_pc_i" "cannot remove the link $_pc_dst"
	elif [ "$_pc_kind" = directory ]; then
		if [ -e "$_pc_name" ]; then
			mv -f $_pc_T "$_pc_name" "/proc/self/fd/9/old-$_pc_i" || _pc_fail 44 "$_pc_i" "cannot move the old $_pc_dst aside"
		fi
	elif [ -d "$_pc_name" ]; then
		_pc_fail 44 "$_pc_i" "the target $_pc_dst is a directory"
	fi
	mv -f $_pc_T "$_pc_src" "$_pc_name" || _pc_fail 44 "$_pc_i" "cannot move the upload into $_pc_dst"
}

_pc_place check "$@"
_pc_place move "$@"
`

// syncOutFilesScript copies each source file (through a pinned descriptor,
// after checking it resolves below the root and is a regular file) into the
// staging directory as "i" and writes a tar of 0..n-1 on stdout. Args: root,
// staging id, then the sources' paths relative to the root. A source that is
// a symbolic link is followed only when it resolves below the root.
const syncOutFilesScript = syncPreamble + `
_pc_stage9 "$2"
shift 2
_pc_i=0
for _pc_rel in "$@"; do
	_pc_src=$_pc_base/$_pc_rel
	_pc_parent=${_pc_src%/*}
	[ -n "$_pc_parent" ] || _pc_parent=/
	_pc_dir8 "$_pc_i" "$_pc_parent" nomkdir
	_pc_f=/proc/self/fd/8/${_pc_src##*/}
	[ -e "$_pc_f" ] || _pc_fail 45 "$_pc_i" "$_pc_src does not exist"
	command exec 7<"$_pc_f" || _pc_fail 47 "$_pc_i" "cannot open $_pc_src"
	_pc_r=$(_pc_resolve /proc/self/fd/7) || _pc_fail 47 "$_pc_i" "cannot resolve /proc/self/fd/7 (is /proc mounted?)"
	case $_pc_r in "$_pc_base"/*) ;; *) _pc_fail 42 "$_pc_i" "$_pc_src resolves to $_pc_r, outside the remote root $_pc_root" ;; esac
	[ -f /proc/self/fd/7 ] || _pc_fail 45 "$_pc_i" "$_pc_src is not a regular file"
	cp /proc/self/fd/7 "/proc/self/fd/9/$_pc_i" || _pc_fail 43 "$_pc_i" "cannot copy $_pc_src"
	exec 7<&- 8<&-
	_pc_i=$((_pc_i + 1))
done
cd /proc/self/fd/9 || _pc_fail 47 - "cannot enter the staging directory"
_pc_n=$_pc_i
set --
_pc_i=0
while [ "$_pc_i" -lt "$_pc_n" ]; do
	set -- "$@" "$_pc_i"
	_pc_i=$((_pc_i + 1))
done
tar -cf - -- "$@" || _pc_fail 43 - "tar failed"
`

// syncOutDirScript writes a tar of the source directory's entries (top-level
// names, dotfiles included, no "." entry) on stdout, or nothing when it is
// empty. Args: root, the directory's path relative to the root ("." for
// the root), "1" to follow symbolic links (tar -h) or "0", then tar's
// --exclude=PATTERN options (dropped when tar lacks --exclude: the host
// filters the entries it receives with the same patterns anyway).
const syncOutDirScript = syncPreamble + `
if [ "$2" = . ]; then _pc_d=$_pc_root; else _pc_d=$_pc_base/$2; fi
_pc_follow=$3
shift 3
_pc_dir8 0 "$_pc_d" nomkdir
cd /proc/self/fd/8 || _pc_fail 47 0 "cannot enter $_pc_d"
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
	tar -chf - "$@" || _pc_fail 43 0 "tar failed"
else
	tar -cf - "$@" || _pc_fail 43 0 "tar failed"
fi
`

// postUploadScript runs one post-upload command, verbatim, with /bin/sh -c in
// its working directory (checked and pinned like every other directory).
// Args: root, the directory's path relative to the root ("." for the root),
// the command.
const postUploadScript = syncPreamble + `
if [ "$2" = . ]; then _pc_d=$_pc_root; else _pc_d=$_pc_base/$2; fi
_pc_dir8 - "$_pc_d" nomkdir
cd -P /proc/self/fd/8 || _pc_fail 47 - "cannot enter $_pc_d"
exec 8<&-
PWD=$_pc_d
export PWD
exec /bin/sh -c "$3"
`
