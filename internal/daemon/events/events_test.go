package events

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/tunnel"
)

func TestRingBounded(t *testing.T) {
	r := NewRing(3)
	for i := range 5 {
		r.Add(Event{Msg: fmt.Sprint(i)})
	}
	got := r.List()
	if len(got) != 3 || got[0].Msg != "2" || got[2].Msg != "4" {
		t.Errorf("ring %+v", got)
	}
	if n := len(NewRing(0).buf); n != DefaultSize {
		t.Errorf("default size %d", n)
	}
}

// TestRecordCert: the certificate store's typed records land under the
// names `underpass show events` prints; checks' warnings make a warning.
func TestRecordCert(t *testing.T) {
	r := NewRing(10)
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	r.RecordCert(certstore.Event{Time: at, Kind: certstore.EventLoaded, Subject: "vpn.example", NotAfter: at.Add(24 * time.Hour)})
	r.RecordCert(certstore.Event{Time: at, Kind: certstore.EventLoaded, Subject: "vpn.example", Warnings: []string{"expires in 5 days"}})
	r.RecordCert(certstore.Event{Time: at, Kind: certstore.EventStaged, Subject: "new.example", EffectiveAt: at.Add(time.Hour)})
	r.RecordCert(certstore.Event{Time: at, Kind: certstore.EventActivated, Subject: "new.example"})
	ev := r.List()
	if len(ev) != 4 {
		t.Fatalf("events %+v", ev)
	}
	want := []struct{ msg, level, key, val string }{
		{"certificate loaded", "INFO", "not_after", "2026-11-30T12:00:00Z"},
		{"certificate loaded", "WARN", "warnings", "expires in 5 days"},
		{"certificate staged", "INFO", "effective_at", "2026-11-29T13:00:00Z"},
		{"staged certificate activated", "INFO", "subject", "new.example"},
	}
	for i, w := range want {
		if ev[i].Msg != w.msg || ev[i].Level != w.level || ev[i].Attrs[w.key] != w.val || !ev[i].Time.Equal(at) {
			t.Errorf("event %d: %+v, want %s %s %s=%s", i, ev[i], w.level, w.msg, w.key, w.val)
		}
	}
}

// TestRecord: the gateway's typed records land under the names and
// attributes `underpass show events` prints, whatever its log lines say.
func TestRecord(t *testing.T) {
	r := NewRing(10)
	ip := netip.MustParseAddr("192.0.2.7")
	for _, e := range []tunnel.Event{
		{Kind: tunnel.EventSignIn, Session: "s1", User: "alice", ClientAddr: ip, Transport: "tls"},
		{Kind: tunnel.EventConnect, Session: "s1", User: "alice", ClientAddr: ip, Transport: "tls"},
		{Kind: tunnel.EventDisconnect, Session: "s1", User: "alice", Reason: tunnel.EndConnLost, Err: errors.New("EOF"), BytesIn: 10, BytesOut: 20},
		{Kind: tunnel.EventTakeover, Session: "s1", User: "alice", Reason: tunnel.EndTakenOver},
		{Kind: tunnel.EventSignInFailed, User: "bob", ClientAddr: ip, Err: errors.New("invalid credentials")},
		{Kind: tunnel.EventBanned, ClientAddr: ip},
		{Kind: tunnel.EventSessionEnd, Session: "s1", User: "alice", Reason: tunnel.EndLogoff, BytesIn: 10, BytesOut: 20},
		{Kind: tunnel.EventReload, Applied: []string{"SplitInclude", "MaxSessions"}, NeedRestart: []string{"Pool"}},
	} {
		r.Record(e)
	}
	want := []struct {
		msg   string
		attrs map[string]string
	}{
		{"sign-in", map[string]string{"session": "s1", "user": "alice", "client_ip": "192.0.2.7", "transport": "tls"}},
		{"telemetry", map[string]string{"op": "connect", "session": "s1", "user": "alice", "client_ip": "192.0.2.7", "transport": "tls"}},
		{"telemetry", map[string]string{"op": "disconnect", "session": "s1", "user": "alice", "reason": "connection lost", "err": "EOF", "bytes_in": "10", "bytes_out": "20"}},
		{"session taken over", map[string]string{"session": "s1", "user": "alice", "reason": "taken over by another connection"}},
		{"sign-in failed", map[string]string{"user": "bob", "client_ip": "192.0.2.7", "err": "invalid credentials"}},
		{"client banned", map[string]string{"client_ip": "192.0.2.7"}},
		{"session ended", map[string]string{"session": "s1", "user": "alice", "reason": "client logged off", "bytes_in": "10", "bytes_out": "20"}},
		{"configuration reloaded", map[string]string{"applied": "split_include,limits.max_sessions", "need_restart": "pool"}},
	}
	got := r.List()
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Msg != w.msg || !maps.Equal(got[i].Attrs, w.attrs) {
			t.Errorf("event %d: %s %v, want %s %v", i, got[i].Msg, got[i].Attrs, w.msg, w.attrs)
		}
	}
}
