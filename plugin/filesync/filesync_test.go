package filesync

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/matryer/is"
)

func TestExcluded(t *testing.T) {
	heavy := []string{"node_modules", "node_modules/*", "*/node_modules", "*/node_modules/*"}
	for _, c := range []struct {
		rel      string
		patterns []string
		want     bool
	}{
		{"node_modules", heavy, true},
		{"node_modules/x/y.js", heavy, true},
		{"a/b/node_modules", heavy, true},
		{"a/node_modules/x", heavy, true},
		{"a/node_modules_x", heavy, false},
		{"src/main.go", heavy, false},
		{".git", []string{".git", ".git/*"}, true},
		{"sub/.git/HEAD", []string{".git"}, true}, // unanchored + leading dir
		{"._foo", []string{"._*"}, true},
		{"a/._foo", []string{"._*"}, true},
		{"a/b._foo", []string{"._*"}, false},
		{"build/out.o", []string{"*.o"}, true},
		{"x.o/keep", []string{"*.o"}, true}, // a matching leading dir excludes its tree
		{"a.c", []string{"?.c"}, true},
		{"ab.c", []string{"?.c"}, false},
		{"a/b", []string{"a?b"}, true}, // "?" matches "/" (GNU tar's default)
		{"lit*star", []string{`lit\*star`}, true},
		{"litXstar", []string{`lit\*star`}, false},
		{"file[1].txt", []string{`file\[1\].txt`}, true},
		{"file1.txt", []string{`file\[1\].txt`}, false},
		{"file1.txt", []string{"file[0-9].txt"}, true},
		{"filea.txt", []string{"file[!0-9].txt"}, true},
		{"file5.txt", []string{"file[^0-9].txt"}, false},
		{"a[b", []string{"a[b"}, true}, // unterminated bracket is literal
		{".paperclip-runtime/claude/x", []string{".paperclip-runtime"}, true},
		{"deep/er/.paperclip-runtime", []string{".paperclip-runtime"}, true},
		{"anything", []string{""}, false},
	} {
		if got := excluded(c.rel, c.patterns); got != c.want {
			t.Errorf("excluded(%q, %q) = %v, want %v", c.rel, c.patterns, got, c.want)
		}
	}
}

func TestConfineRemote(t *testing.T) {
	is := is.New(t)
	for _, c := range []struct{ root, p, rel, err string }{
		{"/ws", "/ws", ".", ""},
		{"/ws", "/ws/", ".", ""},
		{"/ws", "/ws/a/b", "a/b", ""},
		{"/ws", "/ws//a/./b", "a/b", ""},
		{"/ws", "/ws/../etc/x", "", `".."`},
		{"/ws", "/ws/a/../../x", "", `".."`},
		{"/ws", "/wsx/a", "", "outside"},
		{"/ws", "/etc/passwd", "", "outside"},
		{"/ws", "ws/a", "", "not an absolute"},
		{"/ws", "/ws/a\nb", "", "newline"},
		{"/", "/a", "a", ""},
	} {
		rel, err := confineRemote(c.root, c.p)
		if c.err == "" {
			is.NoErr(err)
			is.Equal(rel, c.rel)
		} else if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("confineRemote(%q, %q) = %q, %v; want an error with %q", c.root, c.p, rel, err, c.err)
		}
	}
}

func TestNewPlan(t *testing.T) {
	is := is.New(t)
	op := func(files []FileMapping, cmds ...PostUploadCommand) []Operation {
		return []Operation{{OperationID: "op-1", Files: files, PostUploadCommands: cmds}}
	}
	_, err := NewPlan(In, "/ws", op([]FileMapping{{SourcePath: "/h/a", TargetPath: "/ws/a", Kind: "file"}}))
	is.NoErr(err)
	for _, c := range []struct {
		ops  []Operation
		want string
	}{
		{op([]FileMapping{{SourcePath: "/h/a", TargetPath: "/ws/../etc/a", Kind: "file"}}), `operation "op-1": files[0]: the sandbox path "/ws/../etc/a" has a ".." component`},
		{op([]FileMapping{{SourcePath: "/h/a", TargetPath: "/tmp/a", Kind: "file"}}), "is outside the remote root /ws"},
		{op([]FileMapping{{SourcePath: "rel/a", TargetPath: "/ws/a", Kind: "file"}}), "the host path \"rel/a\" is not an absolute path"},
		{op([]FileMapping{{SourcePath: "/h/a", TargetPath: "/ws", Kind: "file"}}), "remote root itself"},
		{op([]FileMapping{{SourcePath: "/h/a", TargetPath: "/ws/a", Kind: "socket"}}), `kind "socket"`},
		{op(nil, PostUploadCommand{Command: "true", Cwd: "/etc"}), `postUploadCommands[0]: the cwd "/etc" is outside`},
		{op(nil, PostUploadCommand{Command: " "}), "postUploadCommands[0]: the command is empty"},
		{[]Operation{{OperationID: ""}}, "no operationId"},
		{[]Operation{{OperationID: "x"}, {OperationID: "x"}}, "used twice"},
	} {
		_, err := NewPlan(In, "/ws", c.ops)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewPlan: %v; want an error with %q", err, c.want)
		}
	}
	// syncOut: the sandbox side is the source.
	_, err = NewPlan(Out, "/ws", op([]FileMapping{{SourcePath: "/etc/shadow", TargetPath: "/h/x", Kind: "file"}}))
	is.True(err != nil && strings.Contains(err.Error(), `the sandbox path "/etc/shadow" is outside the remote root /ws`))
}

// tarEntry is what a test reads back from an archive.
type tarEntry struct {
	typ  byte
	mode int64
	body string
	link string
}

func readTar(t *testing.T, b []byte, ours bool) (map[string]tarEntry, []string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	out := map[string]tarEntry{}
	var order []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, order
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		out[h.Name] = tarEntry{typ: h.Typeflag, mode: h.Mode, body: string(body), link: h.Linkname}
		order = append(order, h.Name)
		if ours && (h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "") {
			t.Errorf("%s: an owner in the archive", h.Name)
		}
		for k := range h.PAXRecords {
			if ours && strings.Contains(k, "xattr") {
				t.Errorf("%s: xattrs in the archive", h.Name)
			}
		}
	}
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestWriteUpload(t *testing.T) {
	is := is.New(t)
	src := t.TempDir()
	write(t, filepath.Join(src, "secret.txt"), "s3cret", 0o644)
	dir := filepath.Join(src, "tree")
	write(t, filepath.Join(dir, "a.txt"), "A", 0o644)
	write(t, filepath.Join(dir, "bin", "run.sh"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "node_modules", "dep", "index.js"), "x", 0o644)
	write(t, filepath.Join(dir, "sub", "node_modules", "y.js"), "y", 0o644)
	write(t, filepath.Join(dir, "._a.txt"), "appledouble", 0o644)
	write(t, filepath.Join(dir, ".hidden"), "h", 0o600)
	is.NoErr(os.MkdirAll(filepath.Join(dir, "empty"), 0o750))
	is.NoErr(os.Symlink("a.txt", filepath.Join(dir, "link")))
	is.NoErr(os.Symlink("/nonexistent/target", filepath.Join(dir, "dangling")))
	outside := filepath.Join(src, "outside")
	write(t, filepath.Join(outside, "o.txt"), "O", 0o644)
	is.NoErr(os.Symlink(outside, filepath.Join(dir, "ext")))
	emptyDir := filepath.Join(src, "emptydir")
	is.NoErr(os.MkdirAll(emptyDir, 0o700))

	mode := int64(0o600)
	items := []uploadItem{
		{kind: "file", source: filepath.Join(src, "secret.txt"), mode: &mode},
		{kind: "directory", source: dir, exclude: []string{"node_modules", "*/node_modules"}},
		{kind: "directory", source: dir, followSymlinks: true, exclude: []string{"*/node_modules", "node_modules"}},
		{kind: "directory", source: emptyDir},
	}
	var buf bytes.Buffer
	stats, err := writeUpload(&buf, items)
	is.NoErr(err)
	ents, order := readTar(t, buf.Bytes(), true)
	is.Equal(order[len(order)-1], endEntry) // the end marker comes last

	is.Equal(ents["0"], tarEntry{typ: tar.TypeReg, mode: 0o600, body: "s3cret"}) // the mapping's mode wins
	is.Equal(stats[0], transferStats{files: 1, bytes: 6})

	is.Equal(ents["1/"].typ, byte(tar.TypeDir))
	is.Equal(ents["1/a.txt"].body, "A")
	is.Equal(ents["1/bin/run.sh"].mode, int64(0o755))
	is.Equal(ents["1/.hidden"].mode, int64(0o600))
	is.Equal(ents["1/empty/"].mode, int64(0o750))
	is.Equal(ents["1/link"], tarEntry{typ: tar.TypeSymlink, mode: 0o777, link: "a.txt"})
	is.Equal(ents["1/ext"].typ, byte(tar.TypeSymlink)) // not followed
	is.Equal(ents["1/dangling"].link, "/nonexistent/target")
	for name := range ents {
		if strings.Contains(name, "node_modules") || strings.Contains(name, "._") {
			t.Errorf("excluded entry %s in the archive", name)
		}
	}
	// followSymlinks: links become what they point at; a dangling one stays.
	is.Equal(ents["2/link"], tarEntry{typ: tar.TypeReg, mode: 0o644, body: "A"})
	is.Equal(ents["2/ext/"].typ, byte(tar.TypeDir))
	is.Equal(ents["2/ext/o.txt"].body, "O")
	is.Equal(ents["2/dangling"].typ, byte(tar.TypeSymlink))
	// An empty directory is one entry.
	is.Equal(ents["3/"].mode, int64(0o700))
	is.Equal(stats[3], transferStats{})
	// files: a.txt, run.sh, .hidden, link, dangling, ext (links count as files).
	is.Equal(stats[1], transferStats{files: 6, bytes: int64(len("A") + len("#!/bin/sh\n") + len("h"))})

	// A link loop under followSymlinks is refused, naming the mapping.
	is.NoErr(os.Symlink("..", filepath.Join(dir, "sub", "up")))
	_, err = writeUpload(io.Discard, []uploadItem{{kind: "directory", source: dir, followSymlinks: true}})
	var me *mappingError
	is.True(errors.As(err, &me))
	is.Equal(me.index, 0)
	is.True(strings.Contains(err.Error(), "symbolic link loop"))

	// A missing source names the mapping.
	_, err = writeUpload(io.Discard, []uploadItem{{kind: "file", source: filepath.Join(dir, "a.txt")}, {kind: "file", source: filepath.Join(src, "missing")}})
	is.True(errors.As(err, &me))
	is.Equal(me.index, 1)
	// A directory given as a file is refused.
	_, err = writeUpload(io.Discard, []uploadItem{{kind: "file", source: dir}})
	is.True(err != nil && strings.Contains(err.Error(), "not a regular file"))
}

// mkTar builds an archive from headers (a regular file's body is its name).
func mkTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		var body []byte
		if h.Typeflag == tar.TypeReg {
			body = []byte("content of " + h.Name)
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name string) *tar.Header { return &tar.Header{Typeflag: tar.TypeReg, Name: name} }
func dirH(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}
}
func sym(name, target string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target}
}
func hard(name, target string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}
}

// TestScanArchiveRefuses: a pod's archive that would write outside the
// extraction directory is refused before anything is written.
func TestScanArchiveRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		hdrs []*tar.Header
		want string
	}{
		{"dotdot", []*tar.Header{reg("../x")}, `"../x" has a ".." component`},
		{"dotdot inside", []*tar.Header{reg("a/../../x")}, `has a ".." component`},
		{"absolute", []*tar.Header{reg("/etc/passwd")}, "absolute path"},
		{"symlink absolute", []*tar.Header{sym("l", "/etc")}, `symbolic link to the absolute path "/etc"`},
		{"symlink up", []*tar.Header{sym("l", "../outside")}, "outside the extraction directory"},
		{"symlink deep up", []*tar.Header{dirH("a/"), sym("a/l", "../../x")}, "outside the extraction directory"},
		{"through own symlink", []*tar.Header{sym("d", "."), sym("d/e", "../x")}, `below the symbolic link "d"`},
		{"file through symlink", []*tar.Header{sym("d", "sub"), reg("d/f")}, `below the symbolic link "d"`},
		{"hardlink absolute", []*tar.Header{hard("h", "/etc/passwd")}, "hard link"},
		{"hardlink up", []*tar.Header{hard("h", "../x")}, "hard link"},
		{"hardlink to unknown", []*tar.Header{hard("h", "later"), reg("later")}, "not an earlier regular file"},
		{"hardlink to symlink", []*tar.Header{sym("s", "x"), hard("h", "s")}, "not an earlier regular file"},
		{"replace root", []*tar.Header{reg(".")}, "replaces the extraction directory"},
		{"unknown type", []*tar.Header{{Typeflag: 'V', Name: "vol"}}, "unsupported type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := mkTar(t, c.hdrs...)
			err := scanArchive(bytes.NewReader(b), nil, nil)
			var ue *unsafeArchiveError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("scanArchive: %v; want an unsafeArchiveError with %q", err, c.want)
			}
			// extractArchive refuses it too, and writes nothing outside.
			base := t.TempDir()
			dir := filepath.Join(base, "target")
			_, err = extractArchive(bytes.NewReader(b), nil, dir)
			if err == nil {
				t.Fatal("extractArchive accepted it")
			}
			ents, _ := os.ReadDir(base)
			for _, e := range ents {
				if e.Name() != "target" {
					t.Errorf("%s was written next to the target", e.Name())
				}
			}
		})
	}
	// Truncated and garbage streams are errors, not shorter archives
	// (archive/tar alone reports EOF for a stream cut at a block boundary).
	b := mkTar(t, reg("a"), reg("b"))
	for _, cut := range []int{512, 700, 1024, 1536, 1600, 2048, 2560, len(b) - 1} {
		if err := scanArchive(bytes.NewReader(b[:cut]), nil, nil); err == nil {
			t.Errorf("an archive cut at %d of %d bytes was accepted", cut, len(b))
		}
	}
	if err := scanArchive(bytes.NewReader(b), nil, nil); err != nil {
		t.Errorf("the whole archive: %v", err)
	}
	if err := scanArchive(bytes.NewReader(nil), nil, nil); err != nil {
		t.Errorf("an empty stream: %v", err)
	}
	if err := scanArchive(strings.NewReader(strings.Repeat("garbage!", 200)), nil, nil); err == nil {
		t.Error("garbage was accepted")
	}
}

func TestExtractArchive(t *testing.T) {
	is := is.New(t)
	setuid := reg("bin/suid")
	setuid.Mode = 0o4755
	exe := reg("bin/tool")
	exe.Mode = 0o750
	b := mkTar(t,
		dirH("./"),
		dirH("bin/"),
		exe, setuid,
		reg("deep/er/file"), // parents without entries
		sym("bin/link", "tool"),
		sym("up", "bin/../deep"), // stays inside
		hard("bin/hard", "bin/tool"),
		reg("node_modules/x.js"),
		reg("._junk"),
		&tar.Header{Typeflag: tar.TypeFifo, Name: "fifo"},
		&tar.Header{Typeflag: tar.TypeDir, Name: "ro/", Mode: 0o555},
		reg("ro/inside"),
	)
	is.NoErr(scanArchive(bytes.NewReader(b), nil, nil))
	base := t.TempDir()
	dir := filepath.Join(base, "out")
	write(t, filepath.Join(dir, "kept.txt"), "host file", 0o644)
	write(t, filepath.Join(dir, "bin", "tool"), "old", 0o644) // replaced
	st, err := extractArchive(bytes.NewReader(b), []string{"._*", "node_modules"}, dir)
	is.NoErr(err)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		is.NoErr(err)
		return string(b)
	}
	mode := func(p string) fs.FileMode {
		fi, err := os.Lstat(filepath.Join(dir, p))
		is.NoErr(err)
		return fi.Mode()
	}
	is.Equal(read("kept.txt"), "host file") // merged, not wiped
	is.Equal(read("bin/tool"), "content of bin/tool")
	is.Equal(mode("bin/tool").Perm(), fs.FileMode(0o750))
	is.Equal(mode("bin/suid"), fs.FileMode(0o755)) // no setuid from a pod
	is.Equal(read("deep/er/file"), "content of deep/er/file")
	l, err := os.Readlink(filepath.Join(dir, "bin", "link"))
	is.NoErr(err)
	is.Equal(l, "tool")
	is.Equal(read("bin/hard"), "content of bin/tool")
	_, err = os.Lstat(filepath.Join(dir, "node_modules"))
	is.True(errors.Is(err, fs.ErrNotExist)) // excluded
	_, err = os.Lstat(filepath.Join(dir, "._junk"))
	is.True(errors.Is(err, fs.ErrNotExist))
	_, err = os.Lstat(filepath.Join(dir, "fifo"))
	is.True(errors.Is(err, fs.ErrNotExist))         // special files are skipped
	is.Equal(mode("ro").Perm(), fs.FileMode(0o555)) // applied after its content
	is.Equal(read("ro/inside"), "content of ro/inside")
	is.NoErr(os.Chmod(filepath.Join(dir, "ro"), 0o755))
	// files: tool, suid, file, link, up, hard, ro/inside.
	is.Equal(st.files, int64(7))

	// A symbolic link already in the host directory is never written through.
	outside := filepath.Join(base, "outside")
	is.NoErr(os.MkdirAll(outside, 0o755))
	is.NoErr(os.Symlink(outside, filepath.Join(dir, "hostlink")))
	_, err = extractArchive(bytes.NewReader(mkTar(t, reg("hostlink/evil"))), nil, dir)
	is.True(err != nil && strings.Contains(err.Error(), "hostlink is a symbolic link"))
	ents, _ := os.ReadDir(outside)
	is.Equal(len(ents), 0)
	// An entry replacing that link replaces the link, not its target.
	_, err = extractArchive(bytes.NewReader(mkTar(t, reg("hostlink"))), nil, dir)
	is.NoErr(err)
	is.True(mode("hostlink").IsRegular())
	ents, _ = os.ReadDir(outside)
	is.Equal(len(ents), 0)
}

// localScript runs a sync script as the pod would, on this machine, with
// shell (e.g. /bin/sh, or BusyBox's sh with only BusyBox applets in PATH).
func localScript(t *testing.T, shell []string, env []string, script string, args []string, stdin io.Reader, stdout io.Writer) (int, string) {
	t.Helper()
	argv, preamble := command(script, args) // as s.run sends it
	cmd := exec.Command(shell[0], append(shell[1:], argv[1:]...)...)
	cmd.Env = env
	if stdin == nil {
		stdin = bytes.NewReader(nil)
	}
	cmd.Stdin = io.MultiReader(bytes.NewReader(preamble), stdin)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// shells are the pod shells the scripts are tested with: /bin/sh with
// this machine's tools, and BusyBox (sh, tar, coreutils applets) when it
// is installed.
func shells(t *testing.T) map[string]struct {
	shell []string
	env   []string
} {
	out := map[string]struct {
		shell []string
		env   []string
	}{"sh": {[]string{"/bin/sh"}, []string{"PATH=" + os.Getenv("PATH")}}}
	if bb, err := exec.LookPath("busybox"); err == nil {
		bin := t.TempDir()
		for _, applet := range []string{"sh", "tar", "mkdir", "mv", "rm", "chmod", "cp", "realpath", "readlink", "cat", "tail", "dd"} {
			if err := os.Symlink(bb, filepath.Join(bin, applet)); err != nil {
				t.Fatal(err)
			}
		}
		out["busybox"] = struct {
			shell []string
			env   []string
		}{[]string{filepath.Join(bin, "sh")}, []string{"PATH=" + bin}}
	} else if ci := os.Getenv("CI"); ci == "true" || ci == "1" {
		t.Fatal("CI=true and busybox is missing (hack/test.sh installs busybox-static)")
	} else {
		t.Log("busybox is not installed: the scripts are tested with /bin/sh only")
	}
	return out
}

// TestSyncScriptsLocal runs the pod scripts on this machine (a pod's file
// system is this one here): placement, modes, replacement, confinement and
// the incomplete-stream guard.
func TestSyncScriptsLocal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the scripts pin directories through /proc/self/fd")
	}
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			host := t.TempDir()
			root := filepath.Join(t.TempDir(), "ws")
			outside := t.TempDir()
			write(t, filepath.Join(host, "f.txt"), "file one", 0o644)
			write(t, filepath.Join(host, "d", "x.sh"), "#!/bin/sh\n", 0o755)
			write(t, filepath.Join(host, "d", "sub", "y"), "why", 0o640)
			mode := int64(0o600)
			upload := func(items []uploadItem, args ...string) (int, string) {
				t.Helper()
				var buf bytes.Buffer
				_, err := writeUpload(&buf, items)
				is.NoErr(err)
				return localScript(t, sh.shell, sh.env, syncInScript, append([]string{root, newSyncID()}, args...), &buf, io.Discard)
			}
			code, stderr := upload([]uploadItem{
				{kind: "file", source: filepath.Join(host, "f.txt"), mode: &mode},
				{kind: "directory", source: filepath.Join(host, "d")},
			}, "file", "a/b/f.txt", "0600", "directory", "dir", "-")
			is.Equal(stderr, "")
			is.Equal(code, 0)
			got, err := os.ReadFile(filepath.Join(root, "a", "b", "f.txt"))
			is.NoErr(err)
			is.Equal(string(got), "file one")
			fi, err := os.Stat(filepath.Join(root, "a", "b", "f.txt"))
			is.NoErr(err)
			is.Equal(fi.Mode().Perm(), fs.FileMode(0o600))
			fi, err = os.Stat(filepath.Join(root, "dir", "x.sh"))
			is.NoErr(err)
			is.Equal(fi.Mode().Perm(), fs.FileMode(0o755))
			fi, err = os.Stat(filepath.Join(root, "dir", "sub", "y"))
			is.NoErr(err)
			is.Equal(fi.Mode().Perm(), fs.FileMode(0o640))
			noStage := func() {
				t.Helper()
				ents, _ := os.ReadDir(root)
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), ".paperclip-upload-") {
						t.Errorf("staging directory %s left behind", e.Name())
					}
				}
			}
			noStage()

			// A directory mapping replaces the old directory as a whole.
			write(t, filepath.Join(root, "dir", "stale"), "old", 0o644)
			code, _ = upload([]uploadItem{{kind: "directory", source: filepath.Join(host, "d")}}, "directory", "dir", "0750")
			is.Equal(code, 0)
			_, err = os.Stat(filepath.Join(root, "dir", "stale"))
			is.True(errors.Is(err, fs.ErrNotExist))
			fi, err = os.Stat(filepath.Join(root, "dir"))
			is.NoErr(err)
			is.Equal(fi.Mode().Perm(), fs.FileMode(0o750))

			// Confinement: a symbolic link on the way is refused (42), and
			// nothing lands outside.
			is.NoErr(os.Symlink(outside, filepath.Join(root, "evil")))
			code, stderr = upload([]uploadItem{{kind: "file", source: filepath.Join(host, "f.txt")}, {kind: "file", source: filepath.Join(host, "f.txt")}},
				"file", "first.txt", "-", "file", "evil/x/f.txt", "-")
			is.Equal(code, 42)
			f := parseScriptFailure(code, []byte(stderr))
			is.True(f != nil)
			is.Equal(f.index, "1")
			_, err = os.Stat(filepath.Join(root, "first.txt"))
			is.True(errors.Is(err, fs.ErrNotExist)) // checked before anything moved
			is.True(strings.Contains(f.detail, "symbolic link"))
			ents, _ := os.ReadDir(outside)
			is.Equal(len(ents), 0)
			noStage()
			// ... even a link that stays inside the root.
			is.NoErr(os.Symlink("a", filepath.Join(root, "inner")))
			code, _ = upload([]uploadItem{{kind: "file", source: filepath.Join(host, "f.txt")}}, "file", "inner/b/g.txt", "-")
			is.Equal(code, 42)
			// The target itself being a link is fine: the link is replaced,
			// never followed (to a file, a directory or nothing).
			is.NoErr(os.MkdirAll(filepath.Join(outside, "d"), 0o755))
			for _, c := range []struct{ link, kind string }{{"t", "file"}, {"d", "file"}, {"d", "directory"}} {
				is.NoErr(os.Symlink(filepath.Join(outside, c.link), filepath.Join(root, "tlink")))
				src := filepath.Join(host, "f.txt")
				if c.kind == "directory" {
					src = filepath.Join(host, "d")
				}
				code, stderr = upload([]uploadItem{{kind: c.kind, source: src}}, c.kind, "tlink", "-")
				is.Equal(stderr, "")
				is.Equal(code, 0)
				fi, err = os.Lstat(filepath.Join(root, "tlink"))
				is.NoErr(err)
				is.Equal(fi.Mode().Type() == fs.ModeSymlink, false)
				ents, _ = os.ReadDir(filepath.Join(outside, "d"))
				is.Equal(len(ents), 0)
				is.NoErr(os.RemoveAll(filepath.Join(root, "tlink")))
			}
			ents, _ = os.ReadDir(outside)
			is.Equal(len(ents), 1) // d, still empty

			// A stream cut short (no end entry) is refused (43), nothing moved.
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			is.NoErr(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "0", Size: 3, Mode: 0o644}))
			_, _ = tw.Write([]byte("cut"))
			is.NoErr(tw.Close())
			code, stderr = localScript(t, sh.shell, sh.env, syncInScript, []string{root, newSyncID(), "file", "cut.txt", "-"}, &buf, io.Discard)
			is.Equal(code, 43)
			is.True(strings.Contains(stderr, "incomplete"))
			_, err = os.Stat(filepath.Join(root, "cut.txt"))
			is.True(errors.Is(err, fs.ErrNotExist))
			noStage()

			// Garbage instead of an archive: tar's own words come back.
			code, stderr = localScript(t, sh.shell, sh.env, syncInScript, []string{root, newSyncID(), "file", "g.txt", "-"}, strings.NewReader(strings.Repeat("not a tar archive\n", 100)), io.Discard)
			is.Equal(code, 43)
			f = parseScriptFailure(code, []byte(stderr))
			is.True(f != nil && strings.Contains(f.detail, "extracting the upload archive failed (") && strings.Contains(f.detail, "tar"))
			noStage()

			// The root itself as a directory target: its entries are replaced.
			code, _ = upload([]uploadItem{{kind: "directory", source: filepath.Join(host, "d")}}, "directory", ".", "-")
			is.Equal(code, 0)
			ents, _ = os.ReadDir(root)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			sort.Strings(names)
			is.Equal(names, []string{"sub", "x.sh"})

			// syncOut of files: confined, regular, through the pinned fd.
			write(t, filepath.Join(root, "out", "bundle"), "bundle bytes", 0o640)
			var out bytes.Buffer
			code, stderr = localScript(t, sh.shell, sh.env, syncOutFilesScript, []string{root, newSyncID(), "out/bundle", "x.sh"}, nil, &out)
			is.Equal(stderr, "")
			is.Equal(code, 0)
			ents2, order := readTar(t, out.Bytes(), false)
			is.Equal(order, []string{"0", "1"})
			is.Equal(ents2["0"].body, "bundle bytes")
			noStage()
			is.NoErr(os.Symlink(filepath.Join(outside), filepath.Join(root, "out", "esc")))
			write(t, filepath.Join(outside, "secret"), "do not read", 0o644)
			is.NoErr(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "out", "esclink")))
			for _, c := range []struct {
				rel  string
				code int
			}{{"out/esc/secret", 42}, {"out/esclink", 42}, {"out/missing", 45}, {"out", 45}} {
				out.Reset()
				code, stderr = localScript(t, sh.shell, sh.env, syncOutFilesScript, []string{root, newSyncID(), c.rel}, nil, &out)
				if code != c.code {
					t.Errorf("syncOut files %s: exit %d (%s), want %d", c.rel, code, stderr, c.code)
				}
				is.True(!strings.Contains(out.String(), "do not read"))
			}

			// syncOut of a directory: links leading outside are refused by
			// the host, whole.
			out.Reset()
			code, _ = localScript(t, sh.shell, sh.env, syncOutDirScript, []string{root, "out", "0"}, nil, &out)
			is.Equal(code, 0)
			err = scanArchive(bytes.NewReader(out.Bytes()), nil, nil)
			is.True(err != nil && strings.Contains(err.Error(), "symbolic link to the absolute path"))
			is.NoErr(os.Remove(filepath.Join(root, "out", "esc")))
			is.NoErr(os.Remove(filepath.Join(root, "out", "esclink")))
			is.NoErr(os.Symlink("bundle", filepath.Join(root, "out", "inlink")))
			// With excludes; the empty case sends nothing.
			write(t, filepath.Join(root, "out", "node_modules", "m.js"), "m", 0o644)
			out.Reset()
			code, stderr = localScript(t, sh.shell, sh.env, syncOutDirScript, []string{root, "out", "0", "--exclude=node_modules", "--exclude=._*"}, nil, &out)
			is.Equal(stderr, "")
			is.Equal(code, 0)
			is.NoErr(scanArchive(bytes.NewReader(out.Bytes()), nil, nil)) // the host accepts what tar wrote
			ents2, _ = readTar(t, out.Bytes(), false)
			is.Equal(ents2["bundle"].body, "bundle bytes")
			is.Equal(ents2["inlink"].typ, byte(tar.TypeSymlink))
			// (BusyBox's tar may lack --exclude: the host filters again.)
			into := filepath.Join(t.TempDir(), "got")
			_, err = extractArchive(bytes.NewReader(out.Bytes()), []string{"node_modules", "._*"}, into)
			is.NoErr(err)
			_, err = os.Lstat(filepath.Join(into, "node_modules"))
			is.True(errors.Is(err, fs.ErrNotExist))
			b, err := os.ReadFile(filepath.Join(into, "bundle"))
			is.NoErr(err)
			is.Equal(string(b), "bundle bytes")
			is.NoErr(os.MkdirAll(filepath.Join(root, "void"), 0o755))
			is.NoErr(os.Symlink(outside, filepath.Join(root, "evil"))) // the root's entries were replaced
			out.Reset()
			code, _ = localScript(t, sh.shell, sh.env, syncOutDirScript, []string{root, "void", "0"}, nil, &out)
			is.Equal(code, 0)
			is.Equal(out.Len(), 0)
			code, _ = localScript(t, sh.shell, sh.env, syncOutDirScript, []string{root, "evil", "0"}, nil, &out)
			is.Equal(code, 42)

			// Post-upload wrapper: the command runs verbatim in its cwd.
			out.Reset()
			code, _ = localScript(t, sh.shell, sh.env, postUploadScript, []string{root, "out", `printf '%s|%s' "$(pwd)" "$PWD"; exit 3`}, nil, &out)
			is.Equal(code, 3)
			real, err := filepath.EvalSymlinks(filepath.Join(root, "out"))
			is.NoErr(err)
			is.Equal(out.String(), real+"|"+real)
			code, stderr = localScript(t, sh.shell, sh.env, postUploadScript, []string{root, "evil", "true"}, nil, &out)
			is.Equal(code, 42)
			is.True(parseScriptFailure(code, []byte(stderr)) != nil)
		})
	}
}

// TestCommand: the argv is a short bootstrap whatever the arguments;
// a preamble cut short runs nothing.
func TestCommand(t *testing.T) {
	is := is.New(t)
	long := strings.Repeat("x", 100_000)
	argv, preamble := command(syncOutDirScript, []string{"/ws", ".", "0", "--exclude=" + long, "it's"})
	is.True(len(strings.Join(argv, " ")) < 400)
	is.True(strings.Contains(string(preamble), long))
	is.True(!strings.Contains(strings.Join(argv, " "), "/ws"))
	if runtime.GOOS != "linux" {
		return
	}
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			dir := t.TempDir()
			script := `printf '%s|' "$@" > "$1/ran"; cat > "$1/stdin"`
			argv, preamble := command(script, []string{dir, "a b", "it's", "$(x)"})
			run := func(pre []byte) int {
				cmd := exec.Command(sh.shell[0], append(sh.shell[1:], argv[1:]...)...)
				cmd.Env = sh.env
				cmd.Stdin = io.MultiReader(bytes.NewReader(pre), strings.NewReader("rest of stdin"))
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					is.True(parseScriptFailure(ee.ExitCode(), stderr.Bytes()) != nil)
					return ee.ExitCode()
				}
				is.NoErr(err)
				return 0
			}
			is.Equal(run(preamble), 0)
			b, err := os.ReadFile(filepath.Join(dir, "ran"))
			is.NoErr(err)
			is.Equal(string(b), dir+"|a b|it's|$(x)|")
			b, err = os.ReadFile(filepath.Join(dir, "stdin"))
			is.NoErr(err)
			is.Equal(string(b), "rest of stdin") // dd left the rest for the script
			is.NoErr(os.Remove(filepath.Join(dir, "ran")))
			is.Equal(run(preamble[:len(preamble)-5]), 125) // cut short: nothing ran
			_, err = os.Stat(filepath.Join(dir, "ran"))
			is.True(errors.Is(err, fs.ErrNotExist))
		})
	}
}

func TestParseScriptFailure(t *testing.T) {
	is := is.New(t)
	f := parseScriptFailure(42, []byte("noise\npaperclip-k8s-sync:42:3: /ws/x resolves to /etc: a symbolic link on the way (refused)\n"))
	is.Equal(*f, scriptFailure{code: 42, index: "3", detail: "/ws/x resolves to /etc: a symbolic link on the way (refused) (noise)"})
	f = parseScriptFailure(44, []byte("mv: cannot move 'a' to 'b': Permission denied\npaperclip-k8s-sync:44:0: cannot move the upload into /ws/b\n"))
	is.Equal(f.detail, "cannot move the upload into /ws/b (mv: cannot move 'a' to 'b': Permission denied)")
	is.True(parseScriptFailure(42, []byte("command said 42")) == nil)
	is.True(parseScriptFailure(1, []byte("paperclip-k8s-sync:42:-: x\n")) == nil) // the code must agree
}

// TestLimitWriter: the download guard stops at the limit.
func TestLimitWriter(t *testing.T) {
	is := is.New(t)
	var buf bytes.Buffer
	w := &limitWriter{w: &buf, max: 10}
	_, err := w.Write(make([]byte, 6))
	is.NoErr(err)
	_, err = w.Write(make([]byte, 5))
	is.True(err != nil && strings.Contains(err.Error(), "10-byte limit"))
	is.Equal(buf.Len(), 6)
}
