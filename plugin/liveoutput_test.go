package plugin

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/podexec"
)

// TestLiveOutputChunksAtRuneBoundaries: whatever the chunking of a
// command's output, every execute.log chunk is valid UTF-8 when the output
// is, at most podexec.MaxChunk bytes, and the chunks of a stream add up to
// exactly its bytes (the host appends only the rest of the final output past
// the streamed text when that text is a prefix of it).
func TestLiveOutputChunksAtRuneBoundaries(t *testing.T) {
	text := []byte("café ✓ 𝄞 naïve — " + strings.Repeat("日本語", 5) + "\n")
	for size := 1; size <= len(text); size++ {
		is := is.NewRelaxed(t)
		got := map[string]*bytes.Buffer{"stdout": {}, "stderr": {}}
		l := &liveOutput{notify: func(stream string, b []byte) {
			if len(b) == 0 {
				t.Errorf("chunk size %d: an empty chunk", size)
			}
			if !utf8.Valid(b) {
				t.Errorf("chunk size %d: %s chunk %q is not valid UTF-8", size, stream, b)
			}
			got[stream].Write(b)
		}}
		// The streams interleave, as podexec delivers them.
		for i := 0; i < len(text); i += size {
			part := text[i:min(i+size, len(text))]
			l.send("stdout", part)
			l.send("stderr", part)
		}
		l.flush()
		is.Equal(got["stdout"].String(), string(text))
		is.Equal(got["stderr"].String(), string(text))
	}
}

// TestLiveOutputFlushesAnUnfinishedSequence: output that ends inside a UTF-8
// sequence (a timeout, a binary file) is sent as it is when the command ends,
// so the streamed bytes still equal the final output's.
func TestLiveOutputFlushesAnUnfinishedSequence(t *testing.T) {
	is := is.New(t)
	var got bytes.Buffer
	var chunks int
	l := &liveOutput{notify: func(_ string, b []byte) { chunks++; got.Write(b) }}
	l.send("stdout", []byte("ok \xe2\x9c"))
	is.Equal(got.String(), "ok ") // the two bytes wait for the rest of ✓
	l.send("stdout", []byte("\x93 \xff\xfe and \xf0\x9d"))
	is.Equal(got.String(), "ok ✓ \xff\xfe and ") // invalid bytes are not held
	l.flush()
	is.Equal(got.String(), "ok ✓ \xff\xfe and \xf0\x9d")
	is.Equal(chunks, 3)
	l.flush() // nothing left
	is.Equal(chunks, 3)
}

// TestLiveOutputBigChunks: a chunk with bytes held before it stays within
// podexec.MaxChunk (the host drops a chunk of more than 1,000,000
// characters), cut at a rune start.
func TestLiveOutputBigChunks(t *testing.T) {
	is := is.New(t)
	var sizes []int
	var got bytes.Buffer
	l := &liveOutput{notify: func(_ string, b []byte) {
		sizes = append(sizes, len(b))
		is.True(utf8.Valid(b))
		got.Write(b)
	}}
	// The rest of the held ✓, then MaxChunk bytes in all, ending at a rune.
	big := append([]byte("\x9c\x93"), bytes.Repeat([]byte("ab✓"), (podexec.MaxChunk-5)/5)...)
	big = append(big, "abc"...)
	is.Equal(len(big), podexec.MaxChunk)
	l.send("stdout", []byte("x\xe2"))
	l.send("stdout", big)
	l.flush()
	want := append([]byte("x\xe2"), big...)
	is.Equal(got.Len(), len(want))
	is.Equal(got.Bytes(), want)
	for _, n := range sizes {
		is.True(n <= podexec.MaxChunk)
	}
	t.Logf("chunk sizes: %v", sizes)
}

// TestManifestIncrementalSessionOutputOptIn: the manifest declares
// incrementalSessionOutput only when the operator asked for it where the
// manifest is printed (README "During a run" says why).
func TestManifestIncrementalSessionOutputOptIn(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "yes": false, "1": true, "true": true} {
		t.Setenv(IncrementalSessionOutputEnv, v)
		m, err := Manifest()
		if err != nil {
			t.Fatal(err)
		}
		caps := m["environmentDrivers"].([]any)[0].(map[string]any)["sandboxCapabilities"].(map[string]any)
		if got := caps["incrementalSessionOutput"]; got != want {
			t.Errorf("%s=%q: incrementalSessionOutput %v, want %v", IncrementalSessionOutputEnv, v, got, want)
		}
		if caps["nativeSyncIn"] != true || caps["reusableLeases"] != true {
			t.Errorf("%s=%q changed the other capabilities: %v", IncrementalSessionOutputEnv, v, caps)
		}
	}
}
