package podexec

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"k8s.io/client-go/tools/remotecommand"

	"github.com/paperclip-k8s/paperclip-k8s/internal/execnode"
)

// Benchmarks against an execnode reached directly (no API server). Each
// iteration runs the command once through Executor.Run and once as a bare
// client-go remotecommand call (new executor + StreamWithContext with plain
// buffers) with the same argv, URL and transport, interleaved so both see the
// same machine load (alternating which goes first). Reported: exec-ns/op, bare-ns/op and ours/bare (the
// ratio of the two totals). ns/op is the sum of both.
//
//	go test -run '^$' -bench . -benchtime 50x ./podexec

func bareStream(b *testing.B, tn *testNode, tr Transport, r Request, argv []string) {
	b.Helper()
	u := tn.kubeletURL(&r, argv)
	var (
		ex  remotecommand.Executor
		err error
	)
	if tr == TransportSPDY {
		ex, err = remotecommand.NewSPDYExecutor(tn.config(), "POST", u)
	} else {
		ex, err = remotecommand.NewWebSocketExecutor(tn.config(), "GET", u.String())
	}
	if err != nil {
		b.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := ex.StreamWithContext(context.Background(), remotecommand.StreamOptions{
		Stdin: r.Stdin, Stdout: &stdout, Stderr: &stderr,
	}); err != nil {
		b.Fatal(err)
	}
}

func benchPair(b *testing.B, r Request, setBytes int64, newStdin func() io.Reader) {
	tn := startTestNode(b, execnode.Options{})
	cmd, err := BuildCommand(r.Command, r.Args, r.Env, r.Cwd)
	if err != nil {
		b.Fatal(err)
	}
	argv := cmd.Argv
	for _, tr := range []Transport{TransportWebSocket, TransportSPDY} {
		b.Run(tr.String(), func(b *testing.B) {
			ex := tn.executor(b, tr)
			if setBytes > 0 {
				b.SetBytes(setBytes)
			}
			var ours, bare time.Duration
			b.ResetTimer()
			runOurs := func() {
				if newStdin != nil {
					r.Stdin = newStdin()
				}
				t0 := time.Now()
				res, err := ex.Run(context.Background(), r)
				ours += time.Since(t0)
				if err != nil || *res.ExitCode != 0 {
					b.Fatalf("Run: %v %+v", err, res)
				}
			}
			runBare := func() {
				if newStdin != nil {
					r.Stdin = newStdin()
				}
				t0 := time.Now()
				bareStream(b, tn, tr, r, argv)
				bare += time.Since(t0)
			}
			for i := range b.N {
				// Alternate the order so neither call always pays for the
				// other's teardown.
				if i%2 == 0 {
					runOurs()
					runBare()
				} else {
					runBare()
					runOurs()
				}
			}
			n := float64(b.N)
			b.ReportMetric(float64(ours.Nanoseconds())/n, "exec-ns/op")
			b.ReportMetric(float64(bare.Nanoseconds())/n, "bare-ns/op")
			b.ReportMetric(float64(ours)/float64(bare), "ours/bare")
		})
	}
}

// BenchmarkRoundTripTrue: the round trip of `true` (argv /bin/sh -lc true).
func BenchmarkRoundTripTrue(b *testing.B) {
	benchPair(b, req("true"), 0, nil)
}

// BenchmarkStdin10MiB: 10 MiB of stdin into `cat >/dev/null`. SetBytes makes
// MB/s cover both calls of an iteration (20 MiB).
func BenchmarkStdin10MiB(b *testing.B) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), (10<<20)/16)
	benchPair(b, req("cat >/dev/null"), 2*int64(len(payload)), func() io.Reader { return bytes.NewReader(payload) })
}
