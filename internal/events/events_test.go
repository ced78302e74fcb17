package events

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
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
	log.Info("sign-in", "user", "alice")
	log.Info("unrelated", "x", 1)
	log.Warn("client banned", "client_ip", "192.0.2.1")
	ev := r.List()
	if len(ev) != 2 || ev[0].Attrs["user"] != "alice" || ev[0].Attrs["gw"] != "a" || ev[1].Msg != "client banned" {
		t.Errorf("events %+v", ev)
	}
	// The wrapped handler still filters by its own level.
	if strings.Contains(out.String(), "sign-in") || !strings.Contains(out.String(), "client banned") {
		t.Errorf("output %q", out.String())
	}
}
