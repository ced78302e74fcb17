package cstp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestRoundTrip(t *testing.T) {
	types := []Type{Data, DPDReq, DPDResp, Disconnect, Keepalive, Compressed, Terminate, Type(0x42)}
	payloads := [][]byte{nil, {1}, bytes.Repeat([]byte{0xab}, 1500), bytes.Repeat([]byte{7}, MaxRecordPayload)}
	var stream []byte
	for _, ty := range types {
		for _, p := range payloads {
			stream = AppendFrame(stream, ty, p)
		}
	}
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(stream),
		"one byte": iotest.OneByteReader(bytes.NewReader(stream)),
		"bufio":    bufio.NewReader(bytes.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			fr := NewReader(r, MaxRecordPayload)
			for _, ty := range types {
				for _, p := range payloads {
					gt, gp, err := fr.Next()
					if err != nil || gt != ty || !bytes.Equal(gp, p) {
						t.Fatalf("got %v %d bytes %v, want %v %d bytes", gt, len(gp), err, ty, len(p))
					}
				}
			}
			if _, _, err := fr.Next(); err != io.EOF {
				t.Fatalf("end: %v, want io.EOF", err)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"bad magic", []byte("STX\x01\x00\x00\x00\x00"), 0, ErrBadMagic},
		{"bad version", []byte("STF\x02\x00\x00\x00\x00"), 0, ErrBadMagic},
		{"too large", []byte("STF\x01\x40\x00\x00\x00"), MaxRecordPayload, ErrTooLarge},
		{"short header", []byte("STF"), 0, ErrTruncated},
		{"short payload", []byte("STF\x01\x00\x10\x00\x00abc"), 0, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := NewReader(bytes.NewReader(tt.in), tt.max).Next()
			var fe *FrameError
			if !errors.Is(err, tt.want) || !errors.As(err, &fe) || fe.Error() == "" {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == ErrTruncated && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("truncation should wrap io.ErrUnexpectedEOF: %v", err)
			}
		})
	}
}

func TestHeaderAndHelpers(t *testing.T) {
	var h [HeaderLen]byte
	PutHeader(h[:], DPDResp, 0x1234)
	if !bytes.Equal(h[:], []byte{'S', 'T', 'F', 1, 0x12, 0x34, 0x04, 0}) {
		t.Fatalf("header % x", h)
	}
	if p := DisconnectPayload(ReasonUserDisconnect, "bye"); !bytes.Equal(p, []byte("\xb0bye")) {
		t.Fatalf("disconnect payload % x", p)
	}
	for _, ty := range []Type{Data, DPDReq, DPDResp, Disconnect, Keepalive, Compressed, Terminate, 0x77} {
		if ty.String() == "" {
			t.Errorf("%d: empty name", ty)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("PutHeader with a too-long payload must panic")
		}
	}()
	PutHeader(h[:], Data, 0x10000)
}

func FuzzReader(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, Data, []byte{0x45, 0, 0, 20}), DPDReq, []byte("x")))
	f.Add([]byte("STF\x01\xff\xff\x00\x00"))
	f.Add([]byte("STF\x01\x00\x05\x05\x00\xb0bye"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), MaxRecordPayload)
		consumed := 0
		for i := 0; i < 1000; i++ { // bounded: a frame consumes at least 8 bytes
			_, p, err := r.Next()
			if err != nil {
				return
			}
			consumed += HeaderLen + len(p)
			if len(p) > MaxRecordPayload || consumed > len(b) {
				t.Fatalf("payload %d, consumed %d of %d", len(p), consumed, len(b))
			}
		}
	})
}

func BenchmarkReaderNext(b *testing.B) {
	frame := AppendFrame(nil, Data, make([]byte, 1400))
	stream := bytes.Repeat(frame, 64)
	rd := bytes.NewReader(stream)
	r := NewReader(rd, MaxRecordPayload)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := r.Next(); err == io.EOF {
			rd.Reset(stream)
			r.br.Reset(rd)
			i--
		} else if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	p := make([]byte, 1400)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendFrame(buf[:0], Data, p)
	}
}
