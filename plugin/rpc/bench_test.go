package rpc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

type benchConn struct {
	in  *io.PipeWriter
	out *bufio.Reader
}

func startBench(b *testing.B) benchConn {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := rpc.HandlerFunc(func(_ context.Context, _ string, p json.RawMessage) (any, error) {
		return map[string]any{"ok": true, "n": len(p)}, nil
	})
	go func() {
		_ = rpc.Serve(context.Background(), inR, outW, h, rpc.Options{Logger: quietLogger()})
		outW.Close()
	}()
	b.Cleanup(func() { inW.Close(); outR.Close() })
	return benchConn{in: inW, out: bufio.NewReaderSize(outR, 64<<10)}
}

func benchRequest(id int, params string) []byte {
	return fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"environmentExecute","params":%s,"paperclipInvocation":{"id":"0b7c6a52-3f1e-4c1e-9d3a-1c2b3d4e5f60","scope":{"companyId":"c1"}}}`+"\n", id, params)
}

const smallParams = `{"companyId":"c1","leaseId":"l1","command":"sh","args":["-c","echo hi"],"timeoutMs":30000,"bypassSession":true}`

// One request at a time: latency of a full round trip through the pipes.
func BenchmarkRoundTrip(b *testing.B) {
	c := startBench(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.in.Write(benchRequest(i, smallParams)); err != nil {
			b.Fatal(err)
		}
		if _, err := c.out.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
	}
}

// Requests streamed while replies are read: throughput with many in flight.
func BenchmarkPipelined(b *testing.B) {
	for _, size := range []int{0, 64 << 10} {
		params := smallParams
		if size > 0 {
			params = `{"stdin":"` + strings.Repeat("a", size) + `"}`
		}
		b.Run(fmt.Sprintf("params=%dB", len(params)), func(b *testing.B) {
			c := startBench(b)
			req := benchRequest(1, params)
			b.SetBytes(int64(len(req)))
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				for range b.N {
					if _, err := c.in.Write(req); err != nil {
						return
					}
				}
			}()
			for range b.N {
				if _, err := c.out.ReadSlice('\n'); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
}
