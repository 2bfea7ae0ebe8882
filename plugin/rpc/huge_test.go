package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/paperclip-k8s/paperclip-k8s/internal/testutil"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

func memStats() runtime.MemStats {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

func decodeLines(t *testing.T, out []byte) []map[string]json.RawMessage {
	t.Helper()
	var msgs []map[string]json.RawMessage
	for _, line := range bytes.SplitAfter(out, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("bad output line %q: %v", line, err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

const fillerMiB = 200

// A 200 MiB line at the default (host) limit of 128 MiB: error reply with the id
// recovered from the line's start, the next request still works, and the line is
// buffered at most up to the limit (not whole) and not kept afterwards.
func TestHugeLineDefaultLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 200 MiB")
	}
	is := is.New(t)
	h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return "ok", nil })
	in := testutil.HugeLine(`{"jsonrpc":"2.0","id":7,"method":"environmentExecute","params":{"stdin":"`, fillerMiB<<20,
		`"}}`+"\n"+`{"jsonrpc":"2.0","id":8,"method":"health"}`+"\n")
	var out bytes.Buffer
	before := memStats()
	is.NoErr(rpc.Serve(context.Background(), in, &out, h, rpc.Options{Logger: quietLogger()}))
	after := memStats()

	msgs := decodeLines(t, out.Bytes())
	is.Equal(len(msgs), 2)
	is.Equal(string(msgs[0]["id"]), "7")
	is.Equal(errOf(t, msgs[0]).Code, rpc.CodeInvalidRequest)
	is.Equal(string(msgs[1]["id"]), "8")
	is.Equal(string(msgs[1]["result"]), `"ok"`)

	allocated := after.TotalAlloc - before.TotalAlloc
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("streamed %d MiB: allocated %d MiB in total, %d KiB retained", fillerMiB, allocated>>20, retained>>10)
	// Buffering up to the 128 MiB limit with doubling costs ~256 MiB in total;
	// holding the whole 200 MiB line would cost >= 400 MiB.
	is.True(allocated < 320<<20)
	is.True(retained < 16<<20) // nothing of the line is kept
}

// With a small limit the cost of an over-long line is independent of its size.
func TestHugeLineSmallLimit(t *testing.T) {
	is := is.New(t)
	h := rpc.HandlerFunc(func(context.Context, string, json.RawMessage) (any, error) { return "ok", nil })
	const mib = int64(1 << 20)
	var readers []io.Reader
	// a request: id recovered → -32600 with that id
	readers = append(readers, testutil.HugeLine(`{"jsonrpc":"2.0","id":"big","method":"environmentSyncIn","params":{"b64":"`, fillerMiB*mib, `"}}`+"\n"))
	// no id before the filler: parse error with id null
	readers = append(readers, testutil.HugeLine(`{"params":{"b64":"`, 8*mib, `"},"id":1}`+"\n"))
	// a notification: no reply
	readers = append(readers, testutil.HugeLine(`{"jsonrpc":"2.0","method":"onEvent","params":{"b64":"`, 8*mib, `"}}`+"\n"))
	// a plain over-long line of filler
	readers = append(readers, testutil.HugeLine("", 8*mib, "\n"))
	readers = append(readers, strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"health"}`+"\n"))
	var out bytes.Buffer
	before := memStats()
	is.NoErr(rpc.Serve(context.Background(), io.MultiReader(readers...), &out, h,
		rpc.Options{Logger: quietLogger(), MaxLineBytes: 1 << 20}))
	after := memStats()

	msgs := decodeLines(t, out.Bytes())
	is.Equal(len(msgs), 4)
	is.Equal(string(msgs[0]["id"]), `"big"`)
	is.Equal(errOf(t, msgs[0]).Code, rpc.CodeInvalidRequest)
	is.True(strings.Contains(errOf(t, msgs[0]).Message, "too large"))
	is.Equal(string(msgs[1]["id"]), "null")
	is.Equal(errOf(t, msgs[1]).Code, rpc.CodeParseError)
	is.Equal(string(msgs[2]["id"]), "null")
	is.Equal(errOf(t, msgs[2]).Code, rpc.CodeParseError)
	is.Equal(string(msgs[3]["id"]), "9")

	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("streamed %d MiB past a 1 MiB limit: allocated %d KiB in total", fillerMiB+24, allocated>>10)
	// each over-long line costs growing a buffer up to the limit (~2 MiB), not its size
	is.True(allocated < 16<<20)
}

// An over-long response to one of our calls fails that call at once.
func TestHugeResponseFailsCall(t *testing.T) {
	is := is.New(t)
	errc := make(chan error, 1)
	h := rpc.HandlerFunc(func(ctx context.Context, _ string, _ json.RawMessage) (any, error) {
		_, err := rpc.Call(ctx, rpc.MethodStateGet, nil)
		errc <- err
		return nil, nil
	})
	fh := startHost(t, h, rpc.Options{MaxLineBytes: 1 << 10})
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentAcquireLease"}`)
	c := fh.recv()
	is.Equal(string(c["params"]), `{}`) // nil params are sent as {}
	fh.send(`{"jsonrpc":"2.0","id":` + string(c["id"]) + `,"result":"` + strings.Repeat("z", 4<<10) + `"}`)
	var re *rpc.Error
	is.True(errors.As(<-errc, &re))
	is.Equal(re.Code, rpc.CodeInvalidRequest)
	is.Equal(string(fh.recv()["result"]), "null")
}

// Outgoing messages over the limit are refused instead of being sent (the host
// would drop them silently and the call would time out).
func TestOversizedOutgoing(t *testing.T) {
	is := is.New(t)
	big := strings.Repeat("y", 2<<10)
	notifyErr := make(chan error, 1)
	h := rpc.HandlerFunc(func(ctx context.Context, method string, _ json.RawMessage) (any, error) {
		if method == rpc.MethodEnvironmentExecute {
			notifyErr <- rpc.Notify(ctx, rpc.MethodExecuteLog, map[string]string{"chunk": big})
			return big, nil
		}
		return "small", nil
	})
	fh := startHost(t, h, rpc.Options{MaxLineBytes: 1 << 10})
	fh.send(`{"jsonrpc":"2.0","id":1,"method":"environmentExecute"}`)
	is.True(<-notifyErr != nil)
	e := errOf(t, fh.recv())
	is.Equal(e.Code, rpc.CodeWorkerError)
	is.True(strings.Contains(e.Message, "too large"))
	fh.send(`{"jsonrpc":"2.0","id":2,"method":"health"}`)
	is.Equal(string(fh.recv()["result"]), `"small"`)
}
