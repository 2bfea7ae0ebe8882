package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/matryer/is"
)

func TestLineReader(t *testing.T) {
	is := is.New(t)
	in := "a\n\nbb\r\n" + strings.Repeat("x", 100) + "\nccc\n" + strings.Repeat("y", 40) + "\nlast"
	lr := newLineReader(iotest.OneByteReader(strings.NewReader(in)), 50, 8, 16)
	type line struct {
		s       string
		tooLong bool
		n       int64
	}
	var got []line
	for {
		l, tooLong, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		is.NoErr(err)
		got = append(got, line{string(l), tooLong, lr.lastLen})
	}
	is.Equal(got, []line{
		{"a", false, 1}, {"", false, 0}, {"bb\r", false, 3},
		{"xxxxxxxx", true, 100}, {"ccc", false, 3}, {strings.Repeat("y", 40), false, 40}, {"last", false, 4},
	})
	_, _, err := lr.next()
	is.True(errors.Is(err, io.EOF)) // sticky
}

func TestRecoverEnvelope(t *testing.T) {
	is := is.New(t)
	for _, tc := range []struct {
		prefix, id, method string
		hasMethod          bool
	}{
		{`{"jsonrpc":"2.0","id":7,"method":"environmentExecute","params":{"stdin":"aaaa`, "7", "environmentExecute", true},
		{`{"jsonrpc":"2.0","id":"x y","method":"m"`, `"x y"`, "m", true},
		{`{"jsonrpc":"2.0","method":"onEvent","params":{"a":[1,2`, "", "onEvent", true},
		{`{"params":{"a":"b"},"id":9007199254740993,"result":"zz`, "9007199254740993", "", false},
		{`{"id":{"x":1},"method":"m","params":"`, "", "m", true},
		{`{"params":"aaaa`, "", "", false},
		{`[1,2`, "", "", false},
		{`aaaa`, "", "", false},
		{``, "", "", false},
	} {
		id, method, hasMethod := recoverEnvelope([]byte(tc.prefix))
		is.Equal(string(id), tc.id)
		is.Equal(method, tc.method)
		is.Equal(hasMethod, tc.hasMethod)
	}
}

func TestIsBlank(t *testing.T) {
	is := is.New(t)
	for _, s := range []string{"", " ", "\t\r", "\u00a0\ufeff\u2028"} {
		is.True(isBlank([]byte(s)))
	}
	for _, s := range []string{"x", " {} ", "\xff", " \x00"} {
		is.True(!isBlank([]byte(s)))
	}
}

func TestClip(t *testing.T) {
	is := is.New(t)
	is.Equal(clip("abc", 5), "abc")
	is.Equal(clip("abcdef", 3), "abc…")
	is.Equal(clip("aé", 2), "a…") // never splits a rune
}

// FuzzLineReader checks the streaming splitter against a simple model: every
// "\n"-terminated line (and a final unterminated one) comes back whole when it
// fits, or as its first keep bytes with tooLong when it does not.
func FuzzLineReader(f *testing.F) {
	f.Add([]byte("a\nbb\n\nccc"), uint16(2), uint8(1), uint8(0))
	f.Add([]byte(strings.Repeat("z", 300)+"\nq\n"), uint16(40), uint8(10), uint8(3))
	f.Add([]byte("\n\n\r\n"), uint16(0), uint8(0), uint8(200))
	f.Fuzz(func(t *testing.T, data []byte, maxLine uint16, keep, bufSize uint8) {
		limit := int(maxLine)%2048 + 1
		k := int(keep)%64 + 1
		var r io.Reader = bytes.NewReader(data)
		if bufSize%2 == 1 {
			r = iotest.HalfReader(r)
		}
		lr := newLineReader(r, limit, k, 16+int(bufSize))

		want := bytes.Split(data, []byte("\n"))
		if len(want[len(want)-1]) == 0 {
			want = want[:len(want)-1] // data ended with "\n" (or was empty)
		}
		for i, w := range want {
			got, tooLong, err := lr.next()
			if err != nil {
				t.Fatalf("line %d: %v", i, err)
			}
			if lr.lastLen != int64(len(w)) {
				t.Fatalf("line %d: lastLen %d, want %d", i, lr.lastLen, len(w))
			}
			if len(w) > limit {
				if !tooLong || !bytes.Equal(got, w[:min(len(w), k)]) {
					t.Fatalf("line %d (len %d > %d): tooLong=%v prefix %q", i, len(w), limit, tooLong, got)
				}
				continue
			}
			if tooLong || !bytes.Equal(got, w) {
				t.Fatalf("line %d: got %q tooLong=%v, want %q", i, got, tooLong, w)
			}
		}
		if _, _, err := lr.next(); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d lines: err %v, want EOF", len(want), err)
		}
	})
}

// FuzzDecodeMessage feeds arbitrary lines to the decoder and checks it never
// panics, classifies consistently with encoding/json, and that every reply it
// leads to is one valid JSON-RPC line echoing a valid id.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"manifest":{},"config":{}}}`,
		`{"jsonrpc":"2.0","id":9007199254740993,"method":"health"}`,
		`{"jsonrpc":"2.0","id":"s","method":"environmentExecute","params":{"a":1},"paperclipInvocation":{"id":"i","scope":{"companyId":"c"}}}`,
		`{"jsonrpc":"2.0","method":"onEvent","params":{}}`,
		`{"jsonrpc":"2.0","id":3,"result":null}`,
		`{"jsonrpc":"2.0","id":3,"error":{"code":-32001,"message":"x","data":[1]}}`,
		`{"jsonrpc":"1.0","id":3,"method":"health"}`,
		`{"jsonrpc":"2.0","id":{},"method":"health"}`,
		`{"jsonrpc":"2.0","\u0069d":5,"method":"h","id":6}`,
		`{"jsonrpc":"2.0","id":1,"method":"x","paperclipInvocation":7}`,
		`not json`, `[]`, `null`, `{}`, `"x"`, `{"id":1e400,"method":"m","jsonrpc":"2.0"}`,
		"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\",\"method\":\"\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	c := NewConn(nil, io.Discard, HandlerFunc(nil), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	f.Fuzz(func(t *testing.T, line []byte) {
		m := decodeMessage(line)
		valid := json.Valid(line)
		switch m.kind {
		case kindInvalid:
			if m.fail == nil || (m.fail.Code != CodeParseError && m.fail.Code != CodeInvalidRequest) {
				t.Fatalf("invalid without a proper error: %+v", m.fail)
			}
			if !valid && m.fail.Code != CodeParseError {
				t.Fatalf("invalid JSON classified as %d", m.fail.Code)
			}
			if valid && m.fail.Code == CodeParseError {
				t.Fatal("valid JSON classified as a parse error")
			}
		case kindRequest, kindNotification, kindResponse:
			if !valid {
				t.Fatalf("invalid JSON accepted as kind %d", m.kind)
			}
		}
		if m.id != nil && (!isScalarID(m.id) || !json.Valid(m.id)) {
			t.Fatalf("bad id %q", m.id)
		}
		switch m.kind {
		case kindRequest:
			if m.id == nil || !json.Valid(m.params) {
				t.Fatalf("request with id %q params %q", m.id, m.params)
			}
			// The prefix scan used for over-long lines agrees with the full decode.
			id, method, hasMethod := recoverEnvelope(line)
			if !bytes.Equal(id, m.id) || method != m.method || !hasMethod {
				t.Fatalf("recoverEnvelope = %q %q %v; decode = %q %q", id, method, hasMethod, m.id, m.method)
			}
		case kindNotification:
			if m.id != nil || !json.Valid(m.params) {
				t.Fatalf("notification with id %q params %q", m.id, m.params)
			}
		case kindResponse:
			if m.rerr == nil && !json.Valid(m.result) {
				t.Fatalf("response result %q", m.result)
			}
		}
		// Prefixes of the line never upset the scanner.
		for _, n := range []int{len(line) / 3, len(line) / 2, len(line) - 1} {
			if n >= 0 {
				if id, _, _ := recoverEnvelope(line[:n]); id != nil && !isScalarID(id) {
					t.Fatalf("recovered non-scalar id %q", id)
				}
			}
		}

		var reply []byte
		switch m.kind {
		case kindInvalid:
			reply, _ = c.encodeReply(m.id, "", nil, m.fail)
		case kindRequest:
			reply, _ = c.encodeReply(m.id, m.method, map[string]string{"method": m.method}, nil)
		default:
			return
		}
		if bytes.IndexByte(reply, '\n') != len(reply)-1 {
			t.Fatalf("reply is not one line: %q", reply)
		}
		var r map[string]json.RawMessage
		if err := json.Unmarshal(reply, &r); err != nil {
			t.Fatalf("reply %q: %v", reply, err)
		}
		wantID := m.id
		if wantID == nil {
			wantID = nullJSON
		}
		if string(r["jsonrpc"]) != `"2.0"` || !bytes.Equal(r["id"], wantID) {
			t.Fatalf("reply envelope %q", reply)
		}
		_, hasResult := r["result"]
		_, hasErr := r["error"]
		if hasResult == hasErr {
			t.Fatalf("reply must have exactly one of result/error: %q", reply)
		}
	})
}
