package paperclip

import (
	"testing"

	"github.com/matryer/is"
)

// A `log` message's line keeps its meta (without what the server adds) and
// reads as the worker's slog text line.
func TestParsePluginLogLine(t *testing.T) {
	is := is.New(t)
	id := "7d1c"
	l, ok := parsePluginLine(`[05:09:44] INFO: [plugin] lease expired {"lease":"pl-1","reason":"the pod is gone","n":3,"pod":{"name":"p"},"service":"plugin-worker","pluginId":"`+id+`","pluginLogLevel":"info","pluginTimestamp":"2026-11-30T05:09:44Z"}`+"\n", id)
	is.True(ok)
	is.Equal(l.Level, "INFO")
	is.Equal(l.Source, "log")
	is.Equal(l.Message, "lease expired")
	is.Equal(l.Fields()["lease"], "pl-1")
	is.Equal(l.Text(), `msg="lease expired" lease=pl-1 n=3 pod.name=p reason="the pod is gone"`)
	l, ok = parsePluginLine(`[05:09:44] INFO: [plugin] bare {"service":"plugin-worker","pluginId":"`+id+`","pluginLogLevel":"info"}`, id)
	is.True(ok)
	is.Equal(l, PluginLine{Level: "INFO", Source: "log", Message: "bare"})
	is.Equal(l.Text(), "msg=bare")
}
