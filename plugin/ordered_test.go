package plugin_test

import (
	"encoding/json"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// A terminal's keystrokes are ordered per terminal; stop, close and every
// other method are served as they come.
func TestOrderedRequests(t *testing.T) {
	is := is.New(t)
	key, ok := plugin.OrderedRequests("loginPtyInput", json.RawMessage(`{"workerSessionId":"s1","data":"a"}`))
	is.True(ok)
	is.Equal(key, "s1")
	other, _ := plugin.OrderedRequests("loginPtyInput", json.RawMessage(`{"workerSessionId":"s2","data":"a"}`))
	is.True(other != key) // two terminals do not wait for each other
	for _, m := range []string{"loginPtyStop", "loginPtyClose", "environmentExecute"} {
		_, ok := plugin.OrderedRequests(m, json.RawMessage(`{"workerSessionId":"s1"}`))
		is.True(!ok) // not queued behind keystrokes
	}
	_, ok = plugin.OrderedRequests("loginPtyInput", json.RawMessage(`[1]`))
	is.True(!ok) // malformed params: the handler answers them at once
}
