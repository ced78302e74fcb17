package acdtls

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
)

// TestRecordAgainstPion: after a real handshake (pion on both ends), the
// gateway's own record layer talks to pion's client: what Seal makes,
// pion reads; what pion writes, Open reads. A replay, a tampered record
// and a handshake datagram are refused with the right error. Every suite
// the layer takes over: PSK AES-128-GCM and the ECDHE-RSA AES-GCM ones;
// the RSA-key-exchange suites are refused with ErrSuite (they stay on
// pion).
func TestRecordAgainstPion(t *testing.T) {
	type setup struct {
		name      string
		handshake func(t *testing.T) *handshakeResult
	}
	cases := []setup{{"PSK AES-128-GCM", func(t *testing.T) *handshakeResult {
		p := pskParams(t)
		key := seq(PSKLen)
		return runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) { return p.ServerOptions(key, first, nil) },
			pskClientOptions(key, p.AppID, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256), true, handshakeTimeout)
	}}}
	for _, name := range []string{"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"} {
		cases = append(cases, setup{"legacy " + name, func(t *testing.T) *handshakeResult {
			p := legacyParams(t, name)
			return runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) { return p.ServerOptions(nil, first, nil) },
				legacyClientOptions(t, p.SessionID, p.MasterSecret, p.Suite.ID, []dtls.CipherSuiteID{p.Suite.ID}), true, handshakeTimeout)
		}})
	}
	for _, name := range []string{"AES128-GCM-SHA256", "OC-DTLS1_2-AES256-GCM"} {
		t.Run("legacy "+name+" stays on pion", func(t *testing.T) {
			p := legacyParams(t, name)
			r := runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) { return p.ServerOptions(nil, first, nil) },
				legacyClientOptions(t, p.SessionID, p.MasterSecret, p.Suite.ID, []dtls.CipherSuiteID{p.Suite.ID}), true, handshakeTimeout)
			if r.serverErr != nil {
				t.Fatal(r.serverErr)
			}
			if _, err := NewServerRecord(r.server); !errors.Is(err, ErrSuite) {
				t.Fatalf("NewServerRecord: %v, want ErrSuite", err)
			}
		})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.handshake(t)
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
			}
			rec, err := NewServerRecord(r.server)
			if err != nil {
				t.Fatal(err)
			}
			// Gateway -> client: sealed here, read by pion.
			msg := AppendRecord(nil, 0, bytes.Repeat([]byte{0x45}, 1400))
			if _, err := r.serverNet.PacketConn.WriteTo(rec.Seal(nil, msg), r.clientNet.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			_ = r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 8192)
			n, err := r.client.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("pion read %d bytes, %v", n, err)
			}
			// Client -> gateway: written by pion, opened here.
			before := len(r.clientNet.sent)
			up := AppendRecord(nil, 3, []byte("dpd probe"))
			if _, err := r.client.Write(up); err != nil {
				t.Fatal(err)
			}
			r.clientNet.mu.Lock()
			d := bytes.Clone(r.clientNet.sent[before])
			r.clientNet.mu.Unlock()
			pt, rest, err := rec.Open(bytes.Clone(d))
			if err != nil || !bytes.Equal(pt, up) || len(rest) != 0 {
				t.Fatalf("Open: %q, rest %d, %v", pt, len(rest), err)
			}
			if _, _, err := rec.Open(bytes.Clone(d)); !errors.Is(err, ErrReplay) {
				t.Errorf("replayed record: %v, want ErrReplay", err)
			}
			bad := bytes.Clone(d)
			bad[len(bad)-1] ^= 1
			bad[10]++ // a fresh sequence number, so only the tag can refuse it
			if _, _, err := rec.Open(bad); !errors.Is(err, ErrAuth) {
				t.Errorf("tampered record: %v, want ErrAuth", err)
			}
			if _, _, err := rec.Open(bytes.Clone(r.first)); !errors.Is(err, ErrNotAppData) {
				t.Errorf("ClientHello: %v, want ErrNotAppData", err)
			}
		})
	}
}

// TestRecordReplayWindow: records opened out of order inside the 64-record
// window are accepted once; duplicates and records older than the window
// are refused.
func TestRecordReplayWindow(t *testing.T) {
	master, cr, sr := seq(48), seq(32), bytes.Repeat([]byte{7}, 32)
	client, err := newRecord(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, master, cr, sr, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	server, err := newRecord(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, master, cr, sr, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	var recs [][]byte
	for i := range 200 {
		recs = append(recs, client.Seal(nil, []byte{byte(i)}))
	}
	// Open 136..199 (one window) shuffled, then again, then the older ones.
	for _, i := range rand.Perm(replayWindowSize) {
		pt, _, err := server.Open(bytes.Clone(recs[136+i]))
		if err != nil || pt[0] != byte(136+i) {
			t.Fatalf("record %d: %v", 136+i, err)
		}
	}
	for i := 136; i < 200; i++ {
		if _, _, err := server.Open(bytes.Clone(recs[i])); !errors.Is(err, ErrReplay) {
			t.Fatalf("duplicate %d: %v", i, err)
		}
	}
	for i := range 136 { // 64 and more below the top (199): outside the window
		if _, _, err := server.Open(bytes.Clone(recs[i])); !errors.Is(err, ErrReplay) {
			t.Fatalf("old record %d: %v", i, err)
		}
	}
	if _, err := newRecord(dtls.TLS_PSK_WITH_AES_128_CCM, master, cr, sr, 1, false); !errors.Is(err, ErrSuite) {
		t.Errorf("CCM: %v, want ErrSuite", err)
	}
}

// FuzzRecordOpen: Open never panics on network input, and only returns a
// plaintext for records that authenticate.
func FuzzRecordOpen(f *testing.F) {
	master, cr, sr := seq(48), seq(32), bytes.Repeat([]byte{7}, 32)
	client, _ := newRecord(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, master, cr, sr, 1, true)
	f.Add(client.Seal(nil, []byte("hello")))
	f.Add([]byte{23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{22, 0xfe, 0xff})
	f.Fuzz(func(t *testing.T, d []byte) {
		server, _ := newRecord(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, master, cr, sr, 1, false)
		for len(d) > 0 {
			pt, rest, err := server.Open(d)
			if err == nil && pt == nil {
				t.Fatal("no error and no plaintext")
			}
			if err != nil && !errors.Is(err, ErrNotAppData) {
				return
			}
			if len(rest) >= len(d) {
				t.Fatal("no progress")
			}
			d = rest
		}
	})
}
