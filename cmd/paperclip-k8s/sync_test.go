package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// The native file sync through the built binary against the local control
// plane. The exec node runs "pod" commands as local processes, so the
// sandbox side (workspacePath, the lease's remoteCwd) is a local directory
// here: the test reads it directly to check what the pod got.

type syncResult struct {
	Operations []struct {
		OperationID      string `json:"operationId"`
		FilesTransferred int64  `json:"filesTransferred"`
		BytesTransferred int64  `json:"bytesTransferred"`
	} `json:"operations"`
}

type mapping map[string]any

func op(id string, files []mapping, cmds ...map[string]any) map[string]any {
	o := map[string]any{"operationId": id, "files": files}
	if len(cmds) > 0 {
		o["postUploadCommands"] = cmds
	}
	return o
}

func (h *hooks) syncParams(l lease, ops ...map[string]any) map[string]any {
	return h.with(map[string]any{"lease": l, "operations": ops})
}

// syncFile has method (environmentSyncIn or environmentSyncOut) copy one
// file, from → to, in the operation id.
func (h *hooks) syncFile(l lease, method, id, from, to string) {
	h.t.Helper()
	h.w.mustCall(method, h.syncParams(l, op(id, []mapping{{"sourcePath": from, "targetPath": to, "kind": "file"}})), nil)
}

func writeFile(t testing.TB, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func perm(t testing.TB, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readString(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func absent(t testing.TB, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("%s exists (%v)", p, err)
	}
}

func TestHookSync(t *testing.T) {
	t.Run("sandbox", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		base := t.TempDir()
		root := filepath.Join(base, "ws") // created by the first sync
		host := filepath.Join(base, "host")
		outside := filepath.Join(base, "outside")
		is.NoErr(os.MkdirAll(outside, 0o755))
		h := newHooks(t, "sandbox", map[string]any{"workspacePath": root})
		l := h.acquire(nil)
		is.Equal(l.Metadata["nativeFileSyncUnsupported"], false)

		// What the host sends: files (one with a mode), a 50 MiB file, a
		// tree with excludes, an empty directory.
		writeFile(t, filepath.Join(host, "a.txt"), []byte("alpha\n"), 0o644)
		writeFile(t, filepath.Join(host, "secret.json"), []byte(`{"token":"x"}`), 0o644)
		big := make([]byte, 50<<20)
		_, _ = rand.Read(big)
		writeFile(t, filepath.Join(host, "big.bin"), big, 0o644)
		tree := filepath.Join(host, "tree")
		writeFile(t, filepath.Join(tree, "README.md"), []byte("# tree\n"), 0o644)
		writeFile(t, filepath.Join(tree, "bin", "run.sh"), []byte("#!/bin/sh\necho run\n"), 0o755)
		writeFile(t, filepath.Join(tree, "src", ".env"), []byte("K=V\n"), 0o600)
		writeFile(t, filepath.Join(tree, "node_modules", "dep", "index.js"), []byte("x"), 0o644)
		writeFile(t, filepath.Join(tree, "src", "node_modules", "y.js"), []byte("y"), 0o644)
		writeFile(t, filepath.Join(tree, "._README.md"), []byte("appledouble"), 0o644)
		is.NoErr(os.MkdirAll(filepath.Join(tree, "empty"), 0o750))
		is.NoErr(os.Symlink("README.md", filepath.Join(tree, "readme-link")))
		emptyDir := filepath.Join(host, "nothing")
		is.NoErr(os.MkdirAll(emptyDir, 0o700))

		t.Run("syncIn files, directories, post-upload commands", func(t *testing.T) {
			is := is.New(t)
			order := filepath.Join(root, "order.log")
			start := time.Now()
			var res syncResult
			h.w.mustCall("environmentSyncIn", h.syncParams(l,
				op("sync-op-1", []mapping{
					{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": filepath.Join(root, ".paperclip-runtime", "claude", "a.txt"), "kind": "file"},
					{"sourcePath": filepath.Join(host, "secret.json"), "targetPath": filepath.Join(root, ".paperclip-runtime", "claude", "secret.json"), "kind": "file", "mode": 0o600},
					{"sourcePath": filepath.Join(host, "big.bin"), "targetPath": filepath.Join(root, "big.bin"), "kind": "file", "access": "rw", "writablePath": root},
					{"sourcePath": tree, "targetPath": filepath.Join(root, "proj", "tree"), "kind": "directory", "exclude": []string{"node_modules", "*/node_modules"}, "access": "ro"},
					{"sourcePath": emptyDir, "targetPath": filepath.Join(root, "proj", "empty"), "kind": "directory"},
				},
					map[string]any{"command": `echo one >> '` + order + `'; pwd -P > cwd-default.txt`},
					map[string]any{"command": `echo two >> '` + order + `'; pwd -P > cwd.txt; ls bin/run.sh > /dev/null`, "cwd": filepath.Join(root, "proj", "tree")},
					map[string]any{"command": `echo three >> '` + order + `'`, "timeoutMs": 20000},
				),
				op("sync-op-2", []mapping{
					{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": filepath.Join(root, "second.txt"), "kind": "file", "mode": 0o444},
				}),
			), &res)
			took := time.Since(start)
			t.Logf("syncIn of 2 operations (a 50 MiB file, a tree, 3 post-upload commands) took %s", took.Round(time.Millisecond))

			is.Equal(len(res.Operations), 2)
			is.Equal(res.Operations[0].OperationID, "sync-op-1")
			is.Equal(res.Operations[1].OperationID, "sync-op-2")
			// a.txt, secret.json, big.bin + README.md, run.sh, .env, readme-link.
			is.Equal(res.Operations[0].FilesTransferred, int64(7))
			is.True(res.Operations[0].BytesTransferred > 50<<20)
			is.Equal(res.Operations[1].FilesTransferred, int64(1))
			is.Equal(res.Operations[1].BytesTransferred, int64(len("alpha\n")))

			rt := filepath.Join(root, ".paperclip-runtime", "claude")
			is.Equal(readString(t, filepath.Join(rt, "a.txt")), "alpha\n")
			is.Equal(perm(t, filepath.Join(rt, "a.txt")), fs.FileMode(0o644))
			is.Equal(perm(t, filepath.Join(rt, "secret.json")), fs.FileMode(0o600)) // the mapping's mode
			is.Equal(fileSHA(t, filepath.Join(root, "big.bin")), fileSHA(t, filepath.Join(host, "big.bin")))
			pt := filepath.Join(root, "proj", "tree")
			is.Equal(readString(t, filepath.Join(pt, "README.md")), "# tree\n")
			is.Equal(perm(t, filepath.Join(pt, "bin", "run.sh")), fs.FileMode(0o755))
			is.Equal(perm(t, filepath.Join(pt, "src", ".env")), fs.FileMode(0o600))
			is.Equal(perm(t, filepath.Join(pt, "empty")), fs.FileMode(0o750))
			link, err := os.Readlink(filepath.Join(pt, "readme-link"))
			is.NoErr(err)
			is.Equal(link, "README.md")
			absent(t, filepath.Join(pt, "node_modules"))
			absent(t, filepath.Join(pt, "src", "node_modules"))
			absent(t, filepath.Join(pt, "._README.md"))
			ents, err := os.ReadDir(filepath.Join(root, "proj", "empty"))
			is.NoErr(err)
			is.Equal(len(ents), 0)
			is.Equal(readString(t, filepath.Join(root, "second.txt")), "alpha\n")
			is.Equal(perm(t, filepath.Join(root, "second.txt")), fs.FileMode(0o444))

			// Post-upload commands ran in order, after the files, in their cwd
			// (default: the remote root).
			is.Equal(readString(t, order), "one\ntwo\nthree\n")
			realRoot, err := filepath.EvalSymlinks(root)
			is.NoErr(err)
			is.Equal(readString(t, filepath.Join(root, "cwd-default.txt")), realRoot+"\n")
			is.Equal(readString(t, filepath.Join(pt, "cwd.txt")), filepath.Join(realRoot, "proj", "tree")+"\n")
			// No staging directory is left behind.
			ents, err = os.ReadDir(root)
			is.NoErr(err)
			for _, e := range ents {
				is.True(!strings.HasPrefix(e.Name(), ".paperclip-upload-"))
			}

			// A directory mapping replaces the target directory.
			writeFile(t, filepath.Join(pt, "stale.txt"), []byte("old"), 0o644)
			h.w.mustCall("environmentSyncIn", h.syncParams(l, op("sync-op-3", []mapping{
				{"sourcePath": tree, "targetPath": pt, "kind": "directory", "exclude": []string{"node_modules", "*/node_modules"}},
			})), &res)
			absent(t, filepath.Join(pt, "stale.txt"))
			is.Equal(readString(t, filepath.Join(pt, "README.md")), "# tree\n")
		})

		t.Run("post-upload commands stop at the first failure", func(t *testing.T) {
			is := is.New(t)
			e := h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-ff", []mapping{
				{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": filepath.Join(root, "ff.txt"), "kind": "file"},
			},
				map[string]any{"command": "touch ran-first"},
				map[string]any{"command": "echo broken >&2; exit 7"},
				map[string]any{"command": "touch must-not-run"},
			)))
			t.Logf("fail-fast error: %s", e.Message)
			is.True(strings.Contains(e.Message, `operation "sync-op-ff": postUploadCommands[1]`))
			is.True(strings.Contains(e.Message, "exited with code 7"))
			is.True(strings.Contains(e.Message, "broken"))
			is.Equal(readString(t, filepath.Join(root, "ff.txt")), "alpha\n") // the files came first
			_, err := os.Stat(filepath.Join(root, "ran-first"))
			is.NoErr(err)
			absent(t, filepath.Join(root, "must-not-run"))
		})

		t.Run("confinement", func(t *testing.T) {
			is := is.New(t)
			// Lexical escapes are refused before anything moves.
			for _, target := range []string{root + "/../escape.txt", "/etc/paperclip-escape.txt", "relative.txt"} {
				e := h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-lex", []mapping{
					{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": target, "kind": "file"},
				})))
				is.Equal(e.Code, rpc.CodeInvalidParams)
				is.True(strings.Contains(e.Message, `operation "sync-op-lex": files[0]`))
				is.True(strings.Contains(e.Message, target))
				t.Logf("refused %s: %s", target, e.Message)
			}
			e := h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-cwd", nil, map[string]any{"command": "true", "cwd": "/tmp"})))
			is.True(strings.Contains(e.Message, `postUploadCommands[0]: the cwd "/tmp" is outside the remote root`))

			// A symbolic link in the sandbox that leads out is refused in the
			// pod (exit 42), naming the operation, the mapping and its paths.
			is.NoErr(os.Symlink(outside, filepath.Join(root, "evil")))
			target := filepath.Join(root, "evil", "sub", "x.txt")
			e = h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-esc", []mapping{
				{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": filepath.Join(root, "fine.txt"), "kind": "file"},
				{"sourcePath": filepath.Join(host, "a.txt"), "targetPath": target, "kind": "file"},
			})))
			t.Logf("symlink escape: %s", e.Message)
			is.True(strings.Contains(e.Message, `environmentSyncIn: operation "sync-op-esc": files[1] (file `+filepath.Join(host, "a.txt")+` → sandbox `+target+`)`))
			is.True(strings.Contains(e.Message, "escapes the remote root"))
			is.True(strings.Contains(e.Message, "(exit 42)"))
			ents, err := os.ReadDir(outside)
			is.NoErr(err)
			is.Equal(len(ents), 0)                     // nothing landed outside
			absent(t, filepath.Join(root, "fine.txt")) // nor anywhere: every target is checked first
			// The post-upload cwd is confined the same way.
			e = h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-cwd2", nil, map[string]any{"command": "touch pwned", "cwd": filepath.Join(root, "evil")})))
			is.True(strings.Contains(e.Message, "the working directory was refused"))
			absent(t, filepath.Join(outside, "pwned"))

			// A missing host source names the mapping.
			e = h.w.callErr("environmentSyncIn", h.syncParams(l, op("sync-op-missing", []mapping{
				{"sourcePath": filepath.Join(host, "missing.txt"), "targetPath": filepath.Join(root, "m.txt"), "kind": "file"},
			})))
			is.True(strings.Contains(e.Message, `operation "sync-op-missing": files[0]`))
			is.True(strings.Contains(e.Message, "no such file"))
			absent(t, filepath.Join(root, "m.txt"))
		})

		t.Run("syncOut files and directories", func(t *testing.T) {
			is := is.New(t)
			out := filepath.Join(base, "out")
			start := time.Now()
			var res syncResult
			h.w.mustCall("environmentSyncOut", h.syncParams(l,
				op("sync-op-10", []mapping{
					{"sourcePath": filepath.Join(root, "big.bin"), "targetPath": filepath.Join(out, "big.bin"), "kind": "file"},
					{"sourcePath": filepath.Join(root, ".paperclip-runtime", "claude", "secret.json"), "targetPath": filepath.Join(out, "files", "secret.json"), "kind": "file", "mode": 0o640},
					{"sourcePath": filepath.Join(root, "proj", "tree"), "targetPath": filepath.Join(out, "tree"), "kind": "directory"},
				}),
				op("sync-op-11", []mapping{
					{"sourcePath": root, "targetPath": filepath.Join(out, "all"), "kind": "directory", "exclude": []string{".paperclip-runtime", "big.bin", "*.log", "evil"}},
				}),
			), &res)
			t.Logf("syncOut of 2 operations (a 50 MiB file, two trees) took %s", time.Since(start).Round(time.Millisecond))
			is.Equal(len(res.Operations), 2)
			is.Equal(res.Operations[0].OperationID, "sync-op-10")
			is.True(res.Operations[0].BytesTransferred > 50<<20)
			is.Equal(fileSHA(t, filepath.Join(out, "big.bin")), fileSHA(t, filepath.Join(host, "big.bin")))
			is.Equal(readString(t, filepath.Join(out, "files", "secret.json")), `{"token":"x"}`)
			is.Equal(perm(t, filepath.Join(out, "files", "secret.json")), fs.FileMode(0o640))
			// The tree made the round trip with its modes and link.
			for _, p := range []string{"README.md", "bin/run.sh", "src/.env"} {
				is.Equal(readString(t, filepath.Join(out, "tree", p)), readString(t, filepath.Join(tree, p)))
				is.Equal(perm(t, filepath.Join(out, "tree", p)), perm(t, filepath.Join(tree, p)))
			}
			is.Equal(perm(t, filepath.Join(out, "tree", "empty")), fs.FileMode(0o750))
			link, err := os.Readlink(filepath.Join(out, "tree", "readme-link"))
			is.NoErr(err)
			is.Equal(link, "README.md")
			// The root with excludes (unanchored, GNU tar style).
			is.Equal(readString(t, filepath.Join(out, "all", "second.txt")), "alpha\n")
			is.Equal(readString(t, filepath.Join(out, "all", "proj", "tree", "README.md")), "# tree\n")
			absent(t, filepath.Join(out, "all", ".paperclip-runtime"))
			absent(t, filepath.Join(out, "all", "big.bin"))
			absent(t, filepath.Join(out, "all", "order.log"))
			absent(t, filepath.Join(out, "all", "evil"))
			is.True(res.Operations[1].FilesTransferred >= 6)

			// An empty directory comes back empty.
			is.NoErr(os.MkdirAll(filepath.Join(root, "void"), 0o755))
			h.w.mustCall("environmentSyncOut", h.syncParams(l, op("sync-op-12", []mapping{
				{"sourcePath": filepath.Join(root, "void"), "targetPath": filepath.Join(out, "void"), "kind": "directory"},
			})), &res)
			is.Equal(res.Operations[0].FilesTransferred, int64(0))
			ents, err := os.ReadDir(filepath.Join(out, "void"))
			is.NoErr(err)
			is.Equal(len(ents), 0)
		})

		t.Run("syncOut refusals", func(t *testing.T) {
			is := is.New(t)
			out := filepath.Join(base, "out2")
			// A link in the sandbox tree that leads outside: the host refuses
			// the whole archive and writes nothing.
			is.NoErr(os.Symlink("/etc", filepath.Join(root, "proj", "tree", "etc-link")))
			e := h.w.callErr("environmentSyncOut", h.syncParams(l, op("sync-op-20", []mapping{
				{"sourcePath": filepath.Join(root, "proj", "tree"), "targetPath": filepath.Join(out, "tree"), "kind": "directory"},
			})))
			t.Logf("archive refused: %s", e.Message)
			is.True(strings.Contains(e.Message, `operation "sync-op-20": files[0] (directory sandbox `+filepath.Join(root, "proj", "tree")))
			is.True(strings.Contains(e.Message, `entry "etc-link" is a symbolic link to the absolute path "/etc"`))
			absent(t, filepath.Join(out, "tree", "README.md"))
			is.NoErr(os.Remove(filepath.Join(root, "proj", "tree", "etc-link")))

			// A file source that leads outside, or is missing.
			is.NoErr(os.Symlink(filepath.Join(outside, "x"), filepath.Join(root, "outlink")))
			writeFile(t, filepath.Join(outside, "x"), []byte("outside"), 0o644)
			e = h.w.callErr("environmentSyncOut", h.syncParams(l, op("sync-op-21", []mapping{
				{"sourcePath": filepath.Join(root, "outlink"), "targetPath": filepath.Join(out, "x"), "kind": "file"},
			})))
			is.True(strings.Contains(e.Message, "(exit 42)"))
			absent(t, filepath.Join(out, "x"))
			e = h.w.callErr("environmentSyncOut", h.syncParams(l, op("sync-op-22", []mapping{
				{"sourcePath": filepath.Join(root, "no-such-file"), "targetPath": filepath.Join(out, "y"), "kind": "file"},
			})))
			is.True(strings.Contains(e.Message, "the source is missing or not a regular file (exit 45)"))
			e = h.w.callErr("environmentSyncOut", h.syncParams(l, op("sync-op-23", []mapping{
				{"sourcePath": "/etc/passwd", "targetPath": filepath.Join(out, "z"), "kind": "file"},
			})))
			is.Equal(e.Code, rpc.CodeInvalidParams)
			is.True(strings.Contains(e.Message, "outside the remote root"))
		})
	})

	t.Run("job", func(t *testing.T) {
		t.Parallel()
		is := is.New(t)
		h := newHooks(t, "job", nil)
		l := h.acquire(nil)
		is.Equal(l.Metadata["nativeFileSyncUnsupported"], true)
		for _, method := range []string{"environmentSyncIn", "environmentSyncOut"} {
			e := h.w.callErr(method, h.syncParams(l, op("sync-op-1", []mapping{
				{"sourcePath": "/tmp/a", "targetPath": "/workspace/a", "kind": "file"},
			})))
			is.True(strings.Contains(e.Message, `is not supported for the "job" backend`))
		}
	})
}
