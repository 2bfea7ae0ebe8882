package execnode

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-logr/logr"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/klog/v2"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	utilexec "k8s.io/utils/exec"
)

const v5Protocol = remotecommand.StreamProtocolV5Name // "v5.channel.k8s.io"

// isWebSocketV5 reports whether r asks for a WebSocket upgrade offering
// v5.channel.k8s.io. cri-streaming's ServeExec (like a kubelet) only speaks
// the v1–v4 WebSocket protocols, which cannot half-close stdin; client-go's
// WebSocket executor only offers v5.
func isWebSocketV5(r *http.Request) bool {
	if !wsstream.IsWebSocketRequest(r) {
		return false
	}
	for _, h := range r.Header.Values("Sec-Websocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if strings.TrimSpace(p) == v5Protocol {
				return true
			}
		}
	}
	return false
}

// streamStatus mirrors metav1.Status as written on the error channel (the
// same JSON cri-streaming writes for the v4 protocols).
type streamStatus struct {
	Status  string               `json:"status,omitempty"`
	Message string               `json:"message,omitempty"`
	Reason  string               `json:"reason,omitempty"`
	Details *streamStatusDetails `json:"details,omitempty"`
	Code    int32                `json:"code,omitempty"`
}

type streamStatusDetails struct {
	Causes []streamStatusCause `json:"causes,omitempty"`
}

type streamStatusCause struct {
	Type    string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// serveExecWebSocketV5 serves an exec over the v5.channel.k8s.io WebSocket
// protocol: channels 0–4 as in v4 plus the CLOSE signal (255, channel) that
// half-closes stdin (handled by wsstream).
func (n *Node) serveExecWebSocketV5(w http.ResponseWriter, r *http.Request, ex remotecommand.Executor, pod, uid, container string, cmd []string, opts *remotecommand.Options) {
	ch := func(real bool, t wsstream.ChannelType) wsstream.ChannelType {
		if real {
			return t
		}
		return wsstream.IgnoreChannel
	}
	channels := []wsstream.ChannelType{
		ch(opts.Stdin, wsstream.ReadChannel),
		ch(opts.Stdout, wsstream.WriteChannel),
		ch(opts.Stderr, wsstream.WriteChannel),
		wsstream.WriteChannel, // error / status
		wsstream.ReadChannel,  // resize
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		v5Protocol: {Binary: true, Channels: channels},
	})
	conn.SetIdleTimeout(n.idle)
	// wsstream's receive loop logs through the request's logger; when the
	// node ends the stream it reports the closed socket as an error. Silence
	// it (the node logs to Options.Log).
	r = r.WithContext(klog.NewContext(r.Context(), logr.Discard()))
	_, streams, err := conn.Open(w, r)
	if err != nil {
		n.logf("websocket upgrade failed: %v", err)
		return
	}
	defer conn.Close()

	// An empty frame on the lowest writable channel tells the client the
	// connection is established (as cri-streaming does).
	switch {
	case opts.Stdout:
		_, _ = streams[1].Write([]byte{})
	case opts.Stderr:
		_, _ = streams[2].Write([]byte{})
	default:
		_, _ = streams[3].Write([]byte{})
	}

	var (
		in   = streams[0]
		out  = streams[1]
		errw = streams[2]
	)
	if !opts.Stdin {
		in = nil
	}
	if !opts.Stdout {
		out = nil
	}
	if !opts.Stderr {
		errw = nil
	}
	st := streamStatus{Status: "Success"}
	// Resizes are JSON TerminalSize frames; the channel is always read, so
	// a client's resize never stalls the connection's other channels.
	resize := make(chan remotecommand.TerminalSize, 1)
	go func() {
		defer close(resize)
		dec := json.NewDecoder(streams[4])
		for {
			var s remotecommand.TerminalSize
			if dec.Decode(&s) != nil {
				return
			}
			if opts.TTY {
				select {
				case resize <- s:
				default: // the command has not taken the previous one
				}
			}
		}
	}()
	if err := ex.ExecInContainer(r.Context(), pod, uid, container, cmd, in, out, errw, opts.TTY, resize, 0); err != nil {
		if ee, ok := err.(utilexec.ExitError); ok && ee.Exited() {
			st = streamStatus{
				Status:  "Failure",
				Reason:  remotecommand.NonZeroExitCodeReason,
				Message: fmt.Sprintf("command terminated with non-zero exit code: %v", ee),
				Details: &streamStatusDetails{Causes: []streamStatusCause{{
					Type: remotecommand.ExitCodeCauseType, Message: fmt.Sprintf("%d", ee.ExitStatus()),
				}}},
			}
		} else {
			st = streamStatus{
				Status:  "Failure",
				Reason:  "InternalError",
				Message: fmt.Sprintf("Internal error occurred: error executing command in container: %v", err),
				Code:    http.StatusInternalServerError,
			}
		}
	}
	b, _ := json.Marshal(st)
	_, _ = streams[3].Write(b)
}
