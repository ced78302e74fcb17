package acdtls

import (
	"bytes"
	"errors"
	"testing"

	"github.com/underpass/underpass/internal/core/cstp"
)

func TestRecordFraming(t *testing.T) {
	tests := []struct {
		name    string
		t       cstp.Type
		payload []byte
		wire    []byte
		over    bool
	}{
		{"data", cstp.Data, []byte{0x45, 0, 0, 20}, []byte{0x00, 0x45, 0, 0, 20}, true},
		{"dpd request, MTU probe", cstp.DPDReq, bytes.Repeat([]byte{9}, 1433), append([]byte{0x03}, bytes.Repeat([]byte{9}, 1433)...), true},
		{"dpd response", cstp.DPDResp, []byte{1, 2, 3, 4}, []byte{0x04, 1, 2, 3, 4}, true},
		{"keepalive", cstp.Keepalive, nil, []byte{0x07}, true},
		{"disconnect goes over CSTP", cstp.Disconnect, []byte{0xb0}, []byte{0x05, 0xb0}, false},
		{"terminate goes over CSTP", cstp.Terminate, nil, []byte{0x09}, false},
		{"compressed is never sent", cstp.Compressed, []byte{1}, []byte{0x08, 1}, false},
		{"unknown type", cstp.Type(0x42), []byte{1}, []byte{0x42, 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire := AppendRecord([]byte{}, tt.t, tt.payload)
			if !bytes.Equal(wire, tt.wire) {
				t.Fatalf("AppendRecord = % x, want % x", wire, tt.wire)
			}
			ty, payload, err := ParseRecord(wire)
			if err != nil || ty != tt.t || !bytes.Equal(payload, tt.payload) {
				t.Fatalf("ParseRecord = %v, % x, %v", ty, payload, err)
			}
			if OverDTLS(tt.t) != tt.over {
				t.Fatalf("OverDTLS(%v) = %v", tt.t, !tt.over)
			}
		})
	}
	if _, _, err := ParseRecord(nil); !errors.Is(err, ErrEmptyRecord) {
		t.Fatalf("ParseRecord(nil) error %v", err)
	}
	// A DPD probe is echoed with the same payload and length.
	probe := AppendRecord(nil, cstp.DPDReq, bytes.Repeat([]byte{0xaa}, 1200))
	_, p, _ := ParseRecord(probe)
	if echo := AppendRecord(nil, cstp.DPDResp, p); len(echo) != len(probe) || echo[0] != byte(cstp.DPDResp) {
		t.Fatal("DPD echo differs in length or type")
	}
}
