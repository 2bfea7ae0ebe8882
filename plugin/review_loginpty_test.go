package plugin

import (
	"context"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/matryer/is"
)

// The output cap cuts at a rune start: the last chunk before the cap is
// whole UTF-8 (JSON would turn a cut sequence's bytes into U+FFFD).
func TestLoginPtyOutputCapCutsWholeRunes(t *testing.T) {
	is := is.New(t)
	kr, kw := io.Pipe()
	_ = kr.Close() // Ctrl-C meets a closed keyboard: nothing reads it here
	var chunks []string
	_, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &loginSession{id: "s", hostRouteID: "r", keyboard: kw, cancel: cancel, done: make(chan struct{}),
		notify: func(_ string, params any) { chunks = append(chunks, params.(map[string]any)["chunk"].(string)) }}
	s.sent = maxLoginOutput - 2
	s.output([]byte("aé")) // the cap falls inside 'é'
	is.True(len(chunks) >= 2)
	for _, c := range chunks {
		is.True(utf8.ValidString(c))
	}
	is.Equal(chunks[0], "a")
	is.Equal(s.sent, maxLoginOutput)
}

// A terminal past its output cap is torn down even when its stream reads
// no more input (the Ctrl-C typed first would wait for ever).
func TestLoginPtyOutputCapEndsAStuckStream(t *testing.T) {
	is := is.New(t)
	_, kw := io.Pipe() // nothing reads the keyboard
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &loginSession{id: "s", hostRouteID: "r", keyboard: kw, cancel: cancel, done: make(chan struct{}),
		notify: func(string, any) {}}
	s.output(make([]byte, maxLoginOutput+1))
	<-ctx.Done() // torn down (within loginInterruptGrace)
	is.Equal(s.sent, maxLoginOutput)
}
