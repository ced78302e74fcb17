package tunnel

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

// recConn records each Write call to it.
type recConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (c *recConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func TestBatchConn(t *testing.T) {
	rc := &recConn{}
	b := newBatchConn(rc)
	_, _ = b.Write([]byte("handshake"))
	if len(rc.writes) != 1 {
		t.Fatalf("not batching: %d writes, want 1 pass-through", len(rc.writes))
	}
	_ = b.setBatching(true)
	for i := 0; i < 3; i++ {
		_, _ = b.Write([]byte("rec"))
	}
	if len(rc.writes) != 1 {
		t.Fatalf("batching: records went out before Flush")
	}
	if err := b.Flush(); err != nil || len(rc.writes) != 2 || string(rc.writes[1]) != "recrecrec" {
		t.Fatalf("flush: %v %q", err, rc.writes)
	}
	// Past the threshold the batch goes out without waiting for Flush.
	big := bytes.Repeat([]byte{1}, batchFlushSize)
	_, _ = b.Write(big)
	if len(rc.writes) != 3 || len(rc.writes[2]) != batchFlushSize {
		t.Fatalf("threshold flush: %d writes", len(rc.writes))
	}
	// Errors stick while batching.
	rc.err = errors.New("broken pipe")
	_, _ = b.Write([]byte("x"))
	if err := b.Flush(); err == nil {
		t.Fatal("flush error lost")
	}
	if _, err := b.Write([]byte("y")); err == nil {
		t.Fatal("write after a failed flush succeeded")
	}
	// Turning batching off flushes and passes writes through again.
	rc.err = nil
	b2 := newBatchConn(rc)
	_ = b2.setBatching(true)
	_, _ = b2.Write([]byte("tail"))
	if err := b2.setBatching(false); err != nil || string(rc.writes[len(rc.writes)-1]) != "tail" {
		t.Fatalf("setBatching(false) did not flush: %v", err)
	}
}
