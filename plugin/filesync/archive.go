package filesync

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The host side of the file sync: building the upload archive from host
// files (syncIn) and checking and extracting the archive a pod sends
// (syncOut). Host paths come from the host and are trusted; archive entries
// from a pod are not.

// alwaysExcluded is added to every mapping's exclude list, as the reference
// does (macOS AppleDouble sidecars).
const alwaysExcluded = "._*"

// transferStats counts what one mapping or operation moved: entries that
// are not directories, and the content bytes of regular files.
type transferStats struct {
	files, bytes int64
}

func (s *transferStats) add(o transferStats) {
	s.files += o.files
	s.bytes += o.bytes
}

// uploadItem is one mapping of a syncIn operation as the archive carries it.
type uploadItem struct {
	kind           string // "file" or "directory"
	source         string // absolute host path
	mode           *int64
	exclude        []string
	followSymlinks bool
}

// writeUpload writes the archive of a syncIn operation to w: item i as the
// entry "i" (a regular file, or a directory and its tree), then
// endEntry. Every item's stats are returned. Entries carry no owner,
// no xattrs and only permission bits (07777); special files (devices,
// fifos, sockets) are skipped. Symbolic links are archived as links unless
// followSymlinks is set (then they are followed; a dangling one stays a
// link).
func writeUpload(w io.Writer, items []uploadItem) ([]transferStats, error) {
	tw := tar.NewWriter(w)
	stats := make([]transferStats, len(items))
	for i, it := range items {
		name := fmt.Sprint(i)
		var err error
		switch it.kind {
		case "file":
			err = addHostFile(tw, name, it, &stats[i])
		case "directory":
			err = addHostDir(tw, name, it, &stats[i])
		default:
			err = fmt.Errorf("unknown kind %q", it.kind)
		}
		if err != nil {
			return stats, &mappingError{index: i, err: err}
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: endEntry, Mode: 0o600, ModTime: mtime(time.Now())}); err != nil {
		return stats, err
	}
	return stats, tw.Close()
}

// mtime is t in whole seconds, rounded down: archive/tar rounds to the
// nearest second, and tar warns about a time stamp in the future.
func mtime(t time.Time) time.Time { return t.Truncate(time.Second) }

// mappingError ties an error to the mapping at index.
type mappingError struct {
	index int
	err   error
}

func (e *mappingError) Error() string { return e.err.Error() }
func (e *mappingError) Unwrap() error { return e.err }

func modeBits(m fs.FileMode) int64 {
	b := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

func addHostFile(tw *tar.Writer, name string, it uploadItem, st *transferStats) error {
	f, err := os.Open(it.source) // a file mapping follows a symbolic link
	if err != nil {
		return fmt.Errorf("reading the source: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading the source: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("the source %s is not a regular file (%s)", it.source, fi.Mode().Type())
	}
	mode := modeBits(fi.Mode())
	if it.mode != nil {
		mode = *it.mode & 0o7777
	}
	return copyRegular(tw, name, f, fi, mode, it.source, st)
}

func copyRegular(tw *tar.Writer, name string, f *os.File, fi fs.FileInfo, mode int64, source string, st *transferStats) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: fi.Size(), Mode: mode, ModTime: mtime(fi.ModTime())}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.CopyN(tw, f, fi.Size())
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s shrank while it was read (%d of %d bytes)", source, n, fi.Size())
		}
		return fmt.Errorf("reading %s: %w", source, err)
	}
	st.files++
	st.bytes += n
	return nil
}

func addHostDir(tw *tar.Writer, name string, it uploadItem, st *transferStats) error {
	fi, err := os.Stat(it.source) // the mapping's own directory may be a link
	if err != nil {
		return fmt.Errorf("reading the source: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("the source %s is not a directory", it.source)
	}
	mode := modeBits(fi.Mode())
	if it.mode != nil {
		mode = *it.mode & 0o7777
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime(fi.ModTime())}); err != nil {
		return err
	}
	w := &dirWalker{tw: tw, exclude: append([]string{alwaysExcluded}, it.exclude...), follow: it.followSymlinks, st: st}
	return w.walk(it.source, name, "", []fs.FileInfo{fi})
}

type dirWalker struct {
	tw      *tar.Writer
	exclude []string
	follow  bool
	st      *transferStats
}

// walk archives the entries of dir (rel is its path below the mapping's
// source, "" for the source itself) under prefix. ancestors are the
// directories on the way, to refuse a followed link back into one of them.
func (w *dirWalker) walk(dir, prefix, rel string, ancestors []fs.FileInfo) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading the source: %w", err)
	}
	for _, e := range ents {
		childRel := e.Name()
		if rel != "" {
			childRel = rel + "/" + e.Name()
		}
		if excluded(childRel, w.exclude) {
			continue
		}
		full := filepath.Join(dir, e.Name())
		name := prefix + "/" + childRel
		fi, err := os.Lstat(full)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since the directory was read
			}
			return fmt.Errorf("reading the source: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 && w.follow {
			if target, err := os.Stat(full); err == nil {
				fi = target
			}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(full)
			if err != nil {
				return fmt.Errorf("reading the source: %w", err)
			}
			if err := w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: link, Mode: 0o777, ModTime: mtime(fi.ModTime())}); err != nil {
				return err
			}
			w.st.files++
		case fi.IsDir():
			if slices.ContainsFunc(ancestors, func(a fs.FileInfo) bool { return os.SameFile(a, fi) }) {
				return fmt.Errorf("%s: a symbolic link loop (followSymlinks)", full)
			}
			if err := w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: modeBits(fi.Mode()), ModTime: mtime(fi.ModTime())}); err != nil {
				return err
			}
			if err := w.walk(full, prefix, childRel, append(ancestors, fi)); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f, err := os.Open(full)
			if err != nil {
				return fmt.Errorf("reading the source: %w", err)
			}
			err = copyRegular(w.tw, name, f, fi, modeBits(fi.Mode()), full, w.st)
			f.Close()
			if err != nil {
				return err
			}
		default:
			// Devices, fifos and sockets are not transferred.
		}
	}
	return nil
}

// excluded reports whether rel (a path below a mapping's directory, "/"
// separated) matches one of the patterns the way GNU tar's --exclude does by
// default: shell wildcards where "*" and "?" also match "/" and a leading
// ".", a backslash escapes the next character, the pattern may match any
// trailing part of the path that starts after a "/" (unanchored), and a
// match of a leading directory excludes everything below it. The host
// builds its exclude lists for GNU tar (e.g. "node_modules", "*/node_modules/*",
// escaped literal paths).
func excluded(rel string, patterns []string) bool {
	for _, p := range patterns {
		if p == "" {
			continue
		}
		for start := 0; ; {
			if matchLeadingDir(p, rel[start:]) {
				return true
			}
			i := strings.IndexByte(rel[start:], '/')
			if i < 0 {
				break
			}
			start += i + 1
		}
	}
	return false
}

// matchLeadingDir is fnmatch(pattern, s, FNM_LEADING_DIR): s matches, or a
// prefix of s ending just before a "/" does.
func matchLeadingDir(pattern, s string) bool {
	if wildMatch(pattern, s) {
		return true
	}
	for i := 0; i < len(s); i++ {
		if s[i] == '/' && wildMatch(pattern, s[:i]) {
			return true
		}
	}
	return false
}

// wildMatch is fnmatch(pattern, s, 0) on bytes: "*", "?", bracket
// expressions ("[a-z]", "[!x]", "[^x]") and backslash escapes; no flag makes
// "/" or a leading "." special.
func wildMatch(p, s string) bool {
	// Iterative matching with backtracking to the last "*".
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(s) {
		if pi < len(p) {
			switch c := p[pi]; c {
			case '*':
				starP, starS = pi, si
				pi++
				continue
			case '?':
				pi++
				si++
				continue
			case '[':
				if ok, next, valid := matchBracket(p, pi, s[si]); valid {
					if ok {
						pi = next
						si++
						continue
					}
				} else if s[si] == '[' { // an unterminated "[" is literal
					pi++
					si++
					continue
				}
			case '\\':
				if pi+1 < len(p) {
					if p[pi+1] == s[si] {
						pi += 2
						si++
						continue
					}
				} else if s[si] == '\\' {
					pi++
					si++
					continue
				}
			default:
				if c == s[si] {
					pi++
					si++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		pi = starP + 1
		starS++
		si = starS
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// matchBracket matches c against the bracket expression at p[start]; next
// is the index after it. valid is false when the expression has no closing
// bracket.
func matchBracket(p string, start int, c byte) (ok bool, next int, valid bool) {
	i := start + 1
	negate := false
	if i < len(p) && (p[i] == '!' || p[i] == '^') {
		negate = true
		i++
	}
	matched := false
	first := true
	for {
		if i >= len(p) {
			return false, 0, false
		}
		if p[i] == ']' && !first {
			i++
			break
		}
		first = false
		lo := p[i]
		if lo == '\\' && i+1 < len(p) {
			i++
			lo = p[i]
		}
		i++
		hi := lo
		if i+1 < len(p) && p[i] == '-' && p[i+1] != ']' {
			hi = p[i+1]
			if hi == '\\' && i+2 < len(p) {
				hi = p[i+2]
				i++
			}
			i += 2
		}
		if lo <= c && c <= hi {
			matched = true
		}
	}
	return matched != negate, i, true
}

// archiveEntry is a checked entry of a pod's archive.
type archiveEntry struct {
	hdr  *tar.Header
	name string // cleaned, relative, "/"-separated, never "." or ".."
	kind byte   // tar.TypeReg, TypeDir, TypeSymlink or TypeLink
}

// unsafeArchiveError reports an archive entry that is refused.
type unsafeArchiveError struct {
	entry, reason string
}

func (e *unsafeArchiveError) Error() string {
	return fmt.Sprintf("the archive from the pod is refused: entry %q %s", e.entry, e.reason)
}

// scanArchive reads a tar stream from a pod, checks every entry and calls
// visit with each kept one (body reads a regular file's content). Refused:
// absolute names, ".." components, NUL bytes, symbolic links whose target
// is absolute or leads outside the archive's root (from the link's own
// directory), hard links to anything but an earlier regular file of the
// archive, entries below a symbolic link of the archive, and unknown entry
// types. Skipped: the root entry ("." or "./"), devices, fifos, global
// headers, and names matching exclude (GNU tar semantics, see excluded).
// With visit nil it only checks.
func scanArchive(r io.Reader, exclude []string, visit func(e archiveEntry, body io.Reader) error) error {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	regular := map[string]bool{}
	links := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// archive/tar also says EOF for a stream cut at a block
			// boundary: require the end-of-archive blocks (an empty stream
			// is an empty archive).
			if cr.n != 0 && (cr.n%512 != 0 || cr.zeros < 1024) {
				return errors.New("the archive from the pod is truncated (no end-of-archive marker)")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("the archive from the pod is not a valid tar stream: %w", err)
		}
		name, err := cleanEntryName(hdr.Name)
		if err != nil {
			return &unsafeArchiveError{entry: hdr.Name, reason: err.Error()}
		}
		var kind byte
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeGNUSparse: // the reader reports the old TypeRegA as TypeReg
			kind = tar.TypeReg
		case tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
			kind = hdr.Typeflag
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeXGlobalHeader:
			continue
		default:
			return &unsafeArchiveError{entry: hdr.Name, reason: fmt.Sprintf("has the unsupported type %q", hdr.Typeflag)}
		}
		if name == "." {
			if kind != tar.TypeDir {
				return &unsafeArchiveError{entry: hdr.Name, reason: "replaces the extraction directory"}
			}
			continue
		}
		if excluded(name, exclude) {
			continue
		}
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if links[d] {
				return &unsafeArchiveError{entry: hdr.Name, reason: fmt.Sprintf("is below the symbolic link %q of the archive", d)}
			}
		}
		switch kind {
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
				return &unsafeArchiveError{entry: hdr.Name, reason: "is a symbolic link with an empty or invalid target"}
			}
			if path.IsAbs(hdr.Linkname) {
				return &unsafeArchiveError{entry: hdr.Name, reason: fmt.Sprintf("is a symbolic link to the absolute path %q", hdr.Linkname)}
			}
			if t := path.Join(path.Dir(name), hdr.Linkname); t == ".." || strings.HasPrefix(t, "../") {
				return &unsafeArchiveError{entry: hdr.Name, reason: fmt.Sprintf("is a symbolic link to %q, outside the extraction directory", hdr.Linkname)}
			}
			links[name] = true
		case tar.TypeLink:
			target, err := cleanEntryName(hdr.Linkname)
			if err != nil || !regular[target] {
				return &unsafeArchiveError{entry: hdr.Name, reason: fmt.Sprintf("is a hard link to %q, which is not an earlier regular file of the archive", hdr.Linkname)}
			}
			hdr.Linkname = target
			delete(links, name)
		case tar.TypeReg:
			regular[name] = true
			delete(links, name)
		case tar.TypeDir:
			delete(links, name)
		}
		if kind != tar.TypeReg {
			delete(regular, name)
		}
		if visit != nil {
			if err := visit(archiveEntry{hdr: hdr, name: name, kind: kind}, tr); err != nil {
				return err
			}
		}
	}
}

// countingReader counts the bytes read and how many zero bytes end them.
type countingReader struct {
	r     io.Reader
	n     int64
	zeros int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	i := n - 1
	for i >= 0 && p[i] == 0 {
		i--
	}
	if i >= 0 {
		c.zeros = int64(n - 1 - i)
	} else {
		c.zeros += int64(n)
	}
	return n, err
}

// cleanEntryName returns an archive name as a clean relative path ("." for
// the root), or why it is refused.
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", errors.New("has an empty name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("has a NUL byte in its name")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("has an absolute path")
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", errors.New("has a \"..\" component")
		default:
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}

// extractArchive extracts a checked pod archive into the host directory
// dir (created if needed; what it holds is kept unless the archive has an
// entry of the same name, which replaces it). Every write goes through an
// os.Root on dir, and no entry is written through a symbolic link, so the
// archive cannot reach outside dir. Only permission bits are applied
// (never setuid, setgid or sticky); owners are not. Directory modes and
// times are applied last.
func extractArchive(r io.Reader, exclude []string, dir string) (transferStats, error) {
	var st transferStats
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return st, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer root.Close()
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	err = scanArchive(r, exclude, func(e archiveEntry, body io.Reader) error {
		if err := mkParents(root, e.name); err != nil {
			return err
		}
		existing, lerr := root.Lstat(e.name)
		exists := lerr == nil
		if lerr != nil && !errors.Is(lerr, fs.ErrNotExist) {
			return lerr
		}
		if exists && !(e.kind == tar.TypeDir && existing.IsDir()) {
			if err := root.RemoveAll(e.name); err != nil {
				return fmt.Errorf("replacing %s: %w", e.name, err)
			}
		}
		switch e.kind {
		case tar.TypeDir:
			if !exists || !existing.IsDir() {
				if err := root.Mkdir(e.name, 0o700); err != nil {
					return err
				}
			}
			dirs = append(dirs, dirMeta{e.name, fs.FileMode(e.hdr.Mode) & fs.ModePerm, e.hdr.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(e.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			n, err := io.Copy(f, body)
			if err == nil {
				err = f.Chmod(fs.FileMode(e.hdr.Mode) & fs.ModePerm)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", e.name, err)
			}
			_ = root.Chtimes(e.name, e.hdr.ModTime, e.hdr.ModTime)
			st.files++
			st.bytes += n
		case tar.TypeSymlink:
			if err := root.Symlink(e.hdr.Linkname, e.name); err != nil {
				return err
			}
			st.files++
		case tar.TypeLink:
			if fi, err := root.Lstat(e.hdr.Linkname); err != nil || !fi.Mode().IsRegular() {
				return &unsafeArchiveError{entry: e.hdr.Name, reason: "is a hard link to something that is no longer a regular file"}
			}
			if err := root.Link(e.hdr.Linkname, e.name); err != nil {
				return err
			}
			st.files++
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.mode); err != nil {
			return st, err
		}
		_ = root.Chtimes(d.name, d.mtime, d.mtime)
	}
	return st, nil
}

// mkParents creates the missing parent directories of name in root and
// refuses a parent that is a symbolic link or not a directory.
func mkParents(root *os.Root, name string) error {
	parts := strings.Split(name, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		fi, err := root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Mkdir(p, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("cannot extract %s: %s is a symbolic link", name, p)
		case !fi.IsDir():
			return fmt.Errorf("cannot extract %s: %s is not a directory", name, p)
		}
	}
	return nil
}
