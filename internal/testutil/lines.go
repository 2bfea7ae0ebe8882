// Package testutil holds small helpers shared by tests of several packages.
package testutil

import (
	"io"
	"strings"
)

// HugeLine streams head, n bytes of 'a' and tail without holding the
// filler in memory: a protocol line of any size for a test.
func HugeLine(head string, n int64, tail string) io.Reader {
	return io.MultiReader(strings.NewReader(head), io.LimitReader(filler{}, n), strings.NewReader(tail))
}

type filler struct{}

func (filler) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}
