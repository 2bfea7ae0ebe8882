package rpc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
)

// byTerminal orders loginPtyInput per workerSessionId, as the plugin does.
func byTerminal(method string, params json.RawMessage) (string, bool) {
	if method != "loginPtyInput" {
		return "", false
	}
	var p struct {
		WorkerSessionID string `json:"workerSessionId"`
	}
	if json.Unmarshal(params, &p) != nil {
		return "", false
	}
	return p.WorkerSessionID, true
}

// The host sends a terminal's keystrokes without waiting for each reply:
// they are served in the order they arrived even when the first one is
// slow, while another terminal's input (and any other method) is served
// at once.
func TestOrderedRequestsServedInArrivalOrder(t *testing.T) {
	is := is.New(t)
	const n = 40
	release := make(chan struct{})
	otherServed := make(chan struct{})
	var mu sync.Mutex
	var got []string
	h := rpc.HandlerFunc(func(_ context.Context, method string, raw json.RawMessage) (any, error) {
		var p struct {
			WorkerSessionID string `json:"workerSessionId"`
			Data            string `json:"data"`
		}
		_ = json.Unmarshal(raw, &p)
		if p.WorkerSessionID == "b" {
			close(otherServed)
			return nil, nil
		}
		if p.Data == "0" {
			<-release // the first keystroke is slow
		}
		mu.Lock()
		got = append(got, p.Data)
		mu.Unlock()
		return nil, nil
	})
	fh := startHost(t, h, rpc.Options{Ordered: byTerminal})
	for i := range n {
		fh.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"loginPtyInput","params":{"workerSessionId":"a","data":"%d"}}`, i+1, i))
	}
	// Another terminal is not held up by the first one's slow keystroke;
	// once it is served, every line before it has been dispatched.
	fh.send(`{"jsonrpc":"2.0","id":1000,"method":"loginPtyInput","params":{"workerSessionId":"b","data":"x"}}`)
	<-otherServed
	close(release)
	for range n + 1 {
		fh.recv()
	}
	mu.Lock()
	defer mu.Unlock()
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	is.Equal(got, want) // one terminal's input, in the order it was sent
}
