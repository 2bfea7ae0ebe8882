package podexec

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/matryer/is"
)

func TestStreamBufferSplitsAndCaps(t *testing.T) {
	is := is.New(t)
	var sizes []int
	var streamed []byte
	_, cancel := context.WithCancelCause(context.Background())
	s := &sink{cancel: cancel, onOutput: func(stream string, b []byte) {
		is.Equal(stream, "stdout")
		sizes = append(sizes, len(b))
		streamed = append(streamed, b...)
	}}
	w := &streamBuffer{sink: s, name: "stdout", max: 3_000_000}
	big := bytes.Repeat([]byte{0xff, 0x00, 'x'}, 2_500_000/3+1)[:2_500_000]
	n, err := w.Write(big)
	is.NoErr(err)
	is.Equal(n, len(big))
	is.Equal(sizes, []int{MaxChunk, MaxChunk, 500_000}) // split into chunks of at most MaxChunk
	is.True(bytes.Equal(streamed, big))

	n, err = w.Write(make([]byte, 500_000)) // exactly at the cap
	is.NoErr(err)
	is.Equal(n, 500_000)

	_, err = w.Write([]byte{1}) // one byte over
	var le *OutputLimitError
	is.True(errors.As(err, &le))
	is.Equal(le.Limit, int64(3_000_000))
	is.Equal(len(w.buf), 3_000_000)

	// After close nothing is written or streamed.
	is.True(errors.As(s.close(), &le))
	before := len(sizes)
	w2 := &streamBuffer{sink: &sink{cancel: cancel, onOutput: s.onOutput}, name: "stdout", max: -1}
	w2.sink.close()
	_, err = w2.Write([]byte("late"))
	is.True(err != nil)
	is.Equal(len(sizes), before)
}
