package events

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"testing"

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

func TestTap(t *testing.T) {
	var out bytes.Buffer
	r := NewRing(10)
	log := slog.New(Tap(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}), r)).With("gw", "a")
	log.Info("configuration reloaded", "file", "gw.yaml")
	log.Info("unrelated", "x", 1)
	log.Info("sign-in", "user", "alice") // the gateway's records come typed, not from its log
	log.Warn("certificate loaded", "subject", "vpn.example")
	ev := r.List()
	if len(ev) != 2 || ev[0].Attrs["file"] != "gw.yaml" || ev[0].Attrs["gw"] != "a" || ev[1].Msg != "certificate loaded" {
		t.Errorf("events %+v", ev)
	}
	// The wrapped handler still filters by its own level.
	if strings.Contains(out.String(), "reloaded") || !strings.Contains(out.String(), "certificate loaded") {
		t.Errorf("output %q", out.String())
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
