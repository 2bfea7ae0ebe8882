package podexec

import (
	"context"
	"errors"
	"io"
	"sync"
)

var errStreamClosed = errors.New("exec: output after the call returned")

// sink serialises writes to the stdout and stderr buffers and OnOutput calls,
// enforces the caps, and stops everything once the call has returned.
type sink struct {
	mu       sync.Mutex
	closed   bool
	limitErr error
	onOutput func(stream string, chunk []byte)
	cancel   context.CancelCauseFunc
}

// close stops further writes and returns the cap error, if any.
func (s *sink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.limitErr
}

// streamBuffer is the io.Writer for one stream.
type streamBuffer struct {
	sink *sink
	name string
	max  int64 // < 0: unlimited
	buf  []byte
}

func (w *streamBuffer) Write(p []byte) (int, error) {
	s := w.sink
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limitErr != nil {
		return 0, s.limitErr
	}
	if s.closed {
		return 0, errStreamClosed
	}
	if w.max >= 0 && int64(len(w.buf))+int64(len(p)) > w.max {
		// Fail closed: keep nothing more, tear the streams down.
		s.limitErr = &OutputLimitError{Stream: w.name, Limit: w.max}
		s.cancel(s.limitErr)
		return 0, s.limitErr
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), MaxChunk)
		start := len(w.buf)
		w.buf = append(w.buf, p[:k]...)
		if s.onOutput != nil {
			end := len(w.buf)
			s.onOutput(w.name, w.buf[start:end:end])
		}
		p = p[k:]
	}
	return n, nil
}

// guardedReader stops reading the caller's stdin once the call has returned:
// a Read in progress may finish, but no new Read reaches the caller's reader.
type guardedReader struct {
	mu      sync.Mutex
	r       io.Reader
	stopped bool
}

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	stopped := g.stopped
	g.mu.Unlock()
	if stopped {
		return 0, io.EOF
	}
	return g.r.Read(p)
}

func (g *guardedReader) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
}

// directWriter passes stdout to Request.Stdout; after close nothing more
// reaches it (close waits for a write in progress).
type directWriter struct {
	mu     sync.Mutex
	dst    io.Writer
	closed bool
	err    error
	cancel context.CancelCauseFunc
}

func (w *directWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errStreamClosed
	}
	n, err := w.dst.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = &StdoutWriteError{Err: err}
		w.cancel(w.err)
		return n, w.err
	}
	return n, nil
}

// close stops further writes and returns the write error, if any.
func (w *directWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.err != nil {
		return w.err
	}
	return nil
}
