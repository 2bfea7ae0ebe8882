package rpc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"unicode"
	"unicode/utf8"
)

const (
	// DefaultMaxLineBytes is the host's per-line limit (MAX_WORKER_MESSAGE_CHARS,
	// 128 Mi). Bytes are at least as many as the host's UTF-16 units, so using it as
	// a byte limit on what we send is conservative.
	DefaultMaxLineBytes = 128 << 20

	readBufSize     = 64 << 10 // bufio.Reader size
	recoverPrefix   = 16 << 10 // bytes of an over-long line kept to recover its id
	releaseBufAbove = 1 << 20  // drop the line buffer after a line larger than this
)

// lineReader splits a stream into "\n"-terminated lines of any size up to max
// bytes (excluding the "\n"). A longer line is read through and discarded; only
// its first keep bytes are returned, with tooLong set. A final line without "\n"
// before EOF is returned as a line.
type lineReader struct {
	br   *bufio.Reader
	max  int
	keep int
	buf  []byte
	err  error // sticky read error, reported after the pending line
	// lastLen is the full length of the last line returned (excluding "\n"),
	// also when it was too long and only a prefix was kept.
	lastLen int64
}

func newLineReader(r io.Reader, max, keep, bufSize int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, bufSize), max: max, keep: keep}
}

// next returns the next line. The slice is valid until the following call.
// err is io.EOF at a clean end of input.
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	if lr.err != nil {
		return nil, false, lr.err
	}
	if cap(lr.buf) > releaseBufAbove {
		lr.buf = nil // do not pin a huge buffer between big lines
	}
	buf := lr.buf[:0]
	started := false
	lr.lastLen = 0
	for {
		frag, rerr := lr.br.ReadSlice('\n')
		if len(frag) > 0 {
			started = true
		}
		content := frag
		if rerr == nil {
			content = frag[:len(frag)-1]
		}
		lr.lastLen += int64(len(content))
		if !tooLong && len(buf)+len(content) > lr.max {
			tooLong = true
			// Keep only a small prefix, in a fresh slice, so the big buffer can go.
			n := min(len(buf), lr.keep)
			small := make([]byte, n, lr.keep)
			copy(small, buf)
			buf = small
		}
		if tooLong {
			if room := lr.keep - len(buf); room > 0 {
				buf = append(buf, content[:min(room, len(content))]...)
			}
		} else {
			buf = grow(buf, len(content), lr.max)
			buf = append(buf, content...)
		}
		switch {
		case rerr == nil:
			lr.buf = buf
			return buf, tooLong, nil
		case errors.Is(rerr, bufio.ErrBufferFull):
			continue
		default:
			lr.buf = buf
			lr.err = rerr
			if started {
				return buf, tooLong, nil // last line without "\n"
			}
			return nil, false, rerr
		}
	}
}

// grow makes room for n more bytes, doubling (capped at limit) so that a line of
// L bytes costs at most ~2L bytes of allocation in total.
func grow(buf []byte, n, limit int) []byte {
	need := len(buf) + n
	if need <= cap(buf) {
		return buf
	}
	c := max(2*cap(buf), need, readBufSize)
	if c > limit {
		c = max(limit, need)
	}
	nb := make([]byte, len(buf), c)
	copy(nb, buf)
	return nb
}

// isBlank reports whether a line is empty or only whitespace (what JS
// String.prototype.trim removes, as the host's readline side does).
func isBlank(line []byte) bool {
	for len(line) > 0 {
		r, size := utf8.DecodeRune(line)
		if !unicode.IsSpace(r) && r != '\uFEFF' {
			return false
		}
		line = line[size:]
	}
	return true
}

type msgKind int

const (
	kindInvalid      msgKind = iota // reply fail with id (nil → null)
	kindRequest                     // method + id
	kindNotification                // method, no id key
	kindResponse                    // id + result/error, no method
)

// message is one decoded input line.
type message struct {
	kind   msgKind
	id     json.RawMessage // request/response id, raw; for kindInvalid the id to echo, or nil
	method string
	params json.RawMessage
	result json.RawMessage // response
	rerr   *Error          // response error
	fail   *Error          // kindInvalid: the error to reply with
	inv    *Invocation     // from "paperclipInvocation"
	badInv bool            // "paperclipInvocation" present but malformed
	badRPC bool            // response with a wrong/missing "jsonrpc"
}

var (
	nullJSON  = json.RawMessage("null")
	emptyJSON = json.RawMessage("{}")
)

// decodeMessage parses and classifies one non-blank line. It never panics; on
// failure it returns kindInvalid with fail set and id set when one could be read.
func decodeMessage(line []byte) message {
	var f map[string]json.RawMessage
	if err := json.Unmarshal(line, &f); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return message{fail: &Error{Code: CodeParseError, Message: "parse error: invalid JSON"}}
		}
		return message{fail: &Error{Code: CodeInvalidRequest, Message: "invalid request: not a JSON object"}}
	}
	if f == nil {
		return message{fail: &Error{Code: CodeInvalidRequest, Message: "invalid request: not a JSON object"}}
	}

	var m message
	rawID, hasID := f["id"]
	idOK := hasID && isScalarID(rawID)
	if idOK {
		m.id = rawID
	}
	rawMethod, hasMethod := f["method"]
	rpcOK := isVersion2(f["jsonrpc"])

	if !hasMethod {
		_, hasResult := f["result"]
		rawErr, hasErr := f["error"]
		if !hasResult && !hasErr {
			m.kind = kindInvalid
			m.fail = &Error{Code: CodeInvalidRequest, Message: "invalid request: no method"}
			return m
		}
		// Anything shaped like a response is never answered (no error ping-pong),
		// even with a bad id; delivery drops what matches no pending call.
		m.kind = kindResponse
		m.badRPC = !rpcOK
		if hasErr && !bytes.Equal(rawErr, nullJSON) {
			var e struct {
				Code    *int            `json:"code"`
				Message string          `json:"message"`
				Data    json.RawMessage `json:"data"`
			}
			if json.Unmarshal(rawErr, &e) != nil || e.Code == nil {
				m.rerr = &Error{Code: CodeInvalidRequest, Message: "malformed error object in response"}
			} else {
				m.rerr = &Error{Code: *e.Code, Message: e.Message}
				if len(e.Data) > 0 && !bytes.Equal(e.Data, nullJSON) {
					m.rerr.Data = e.Data
				}
			}
			return m
		}
		m.result = f["result"]
		if m.result == nil {
			m.result = nullJSON
		}
		return m
	}

	m.kind = kindInvalid
	if len(rawMethod) == 0 || rawMethod[0] != '"' || json.Unmarshal(rawMethod, &m.method) != nil {
		m.fail = &Error{Code: CodeInvalidRequest, Message: "invalid request: method must be a string"}
		return m
	}
	if !rpcOK {
		m.fail = &Error{Code: CodeInvalidRequest, Message: `invalid request: "jsonrpc" must be "2.0"`}
		return m
	}
	if hasID && !idOK {
		m.fail = &Error{Code: CodeInvalidRequest, Message: "invalid request: id must be a string or a number"}
		return m
	}
	if hasID {
		m.kind = kindRequest
	} else {
		m.kind = kindNotification
	}
	m.params = f["params"]
	if m.params == nil {
		m.params = emptyJSON
	}
	if raw, ok := f["paperclipInvocation"]; ok && !bytes.Equal(raw, nullJSON) {
		var inv Invocation
		if json.Unmarshal(raw, &inv) != nil || inv.ID == "" {
			m.badInv = true
		} else {
			m.inv = &inv
		}
	}
	return m
}

// isScalarID reports whether raw (valid JSON) is a string or a number.
func isScalarID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

func isVersion2(raw json.RawMessage) bool {
	if bytes.Equal(raw, []byte(`"2.0"`)) {
		return true
	}
	var s string
	return len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &s) == nil && s == "2.0"
}

// recoverEnvelope scans the top-level keys of a truncated line for "id" and
// "method" (the host writes them before "params"). It stops at the first value it
// cannot read whole.
func recoverEnvelope(prefix []byte) (id json.RawMessage, method string, hasMethod bool) {
	dec := json.NewDecoder(bytes.NewReader(prefix))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, "", false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return
		}
		switch key {
		case "id":
			id = nil
			if isScalarID(raw) {
				id = raw
			}
		case "method":
			hasMethod = len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &method) == nil
		}
	}
	return
}

// parseCallID parses the id of a response to one of our calls (we send integers).
func parseCallID(raw json.RawMessage) (int64, bool) {
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return n, err == nil
}
