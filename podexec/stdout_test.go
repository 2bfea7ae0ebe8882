package podexec

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

// hashWriter counts and hashes what it is given.
type hashWriter struct {
	h hash.Hash
	n int64
}

func (w *hashWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}

type failingWriter struct{ after int64 }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after -= int64(len(p)); w.after < 0 {
		return 0, errors.New("disk full (test)")
	}
	return len(p), nil
}

// TestStdoutWriter: Request.Stdout receives the stdout stream unbuffered and
// uncapped (more than DefaultMaxOutput), stdin streams in at the same time,
// and a failing writer stops the command with a *StdoutWriteError.
func TestStdoutWriter(t *testing.T) {
	tn := startTestNode(t, execnode.Options{})
	for _, tr := range []Transport{TransportWebSocket, TransportSPDY} {
		t.Run(tr.String(), func(t *testing.T) {
			is := is.New(t)
			const size = DefaultMaxOutput + 8<<20
			r := req("/bin/sh", "-c", fmt.Sprintf("head -c %d /dev/zero; echo done >&2", size))
			w := &hashWriter{h: sha256.New()}
			r.Stdout = w
			var chunks int
			r.OnOutput = func(stream string, _ []byte) {
				is.Equal(stream, "stderr") // stdout does not reach OnOutput
				chunks++
			}
			res, err := tn.executor(t, tr).Run(context.Background(), r)
			is.NoErr(err)
			is.Equal(res.ExitCode != nil && *res.ExitCode == 0, true)
			is.Equal(w.n, int64(size))
			zero := sha256.New()
			_, _ = io.CopyN(zero, zeroReader{}, size)
			is.Equal(w.h.Sum(nil), zero.Sum(nil))
			is.Equal(len(res.Stdout), 0)
			is.Equal(string(res.Stderr), "done\n")
			is.True(chunks >= 1)

			// stdin and stdout streaming together (cat).
			r = req("cat")
			r.Stdin = io.LimitReader(zeroReader{}, 20<<20)
			w = &hashWriter{h: sha256.New()}
			r.Stdout = w
			res, err = tn.executor(t, tr).Run(context.Background(), r)
			is.NoErr(err)
			is.Equal(*res.ExitCode, 0)
			is.Equal(w.n, int64(20<<20))

			r = req("/bin/sh", "-c", "head -c 10000000 /dev/zero; sleep 30")
			r.Stdout = &failingWriter{after: 1 << 20}
			_, err = tn.executor(t, tr).Run(context.Background(), r)
			var we *StdoutWriteError
			is.True(errors.As(err, &we))
			is.True(strings.Contains(err.Error(), "disk full (test)"))
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
