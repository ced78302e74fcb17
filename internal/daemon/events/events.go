// Package events keeps the recent operator-relevant events of a running
// gateway (sign-ins, failures, bans, connects, disconnects, takeovers,
// session ends) in a bounded ring, so `underpass show events` can answer
// "what just happened?". Every event comes as a typed record: the
// gateway's through tunnel.Config.Events → Ring.Record, the certificate
// store's through certstore.Config.Events → Ring.RecordCert. No log text
// is parsed.
package events

import (
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/tunnel"
)

// DefaultSize is the ring's capacity: at a few hundred bytes an event,
// 1000 events is under half a MiB and covers minutes of a busy gateway.
const DefaultSize = 1000

// Event is one recorded event as `underpass show events` prints it: a
// level, a message and attributes.
type Event struct {
	Time  time.Time         `json:"time"`
	Level string            `json:"level"`
	Msg   string            `json:"msg"`
	Attrs map[string]string `json:"attrs"`
}

// Ring is a bounded, concurrency-safe event buffer.
type Ring struct {
	mu   sync.Mutex
	buf  []Event
	next int
	full bool
}

// NewRing returns a ring holding the last size events.
func NewRing(size int) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	return &Ring{buf: make([]Event, size)}
}

// Add records e, dropping the oldest event when full.
func (r *Ring) Add(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

// List returns the events, oldest first.
func (r *Ring) List() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]Event(nil), r.buf[:r.next]...)
	}
	return append(append([]Event(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}

// Record adds one of the gateway's typed records (tunnel.Config.Events),
// under the names its log lines use: "telemetry" with op=connect or
// op=disconnect, "sign-in", "sign-in failed", "client banned", "session
// taken over", "session ended", "configuration reloaded" (with applied
// and need_restart in the config file's keys).
func (r *Ring) Record(e tunnel.Event) {
	ev := Event{Time: e.Time, Level: slog.LevelInfo.String(), Msg: e.Kind.String(), Attrs: map[string]string{}}
	set := func(k, v string) {
		if v != "" {
			ev.Attrs[k] = v
		}
	}
	switch e.Kind {
	case tunnel.EventConnect, tunnel.EventDisconnect:
		ev.Msg = "telemetry"
		set("op", e.Kind.String())
	case tunnel.EventBanned:
		ev.Level = slog.LevelWarn.String()
	}
	set("session", e.Session)
	set("user", e.User)
	if e.ClientAddr.IsValid() {
		set("client_ip", e.ClientAddr.String())
	}
	set("transport", e.Transport)
	if e.Reason != 0 {
		set("reason", e.Reason.String())
	}
	if e.Err != nil {
		set("err", e.Err.Error())
	}
	if e.Kind == tunnel.EventReload {
		set("applied", strings.Join(config.Keys(e.Applied), ","))
		set("need_restart", strings.Join(config.Keys(e.NeedRestart), ","))
	}
	if e.Kind == tunnel.EventDisconnect || e.Kind == tunnel.EventSessionEnd {
		set("bytes_in", strconv.FormatUint(e.BytesIn, 10))
		set("bytes_out", strconv.FormatUint(e.BytesOut, 10))
	}
	r.Add(ev)
}

// RecordCert adds one of the certificate store's typed records
// (certstore.Config.Events): "certificate loaded" (a warning when the
// checks warn), "certificate staged", "staged certificate activated".
func (r *Ring) RecordCert(e certstore.Event) {
	ev := Event{Time: e.Time, Level: slog.LevelInfo.String(), Msg: e.Kind.String(), Attrs: map[string]string{}}
	if e.Subject != "" {
		ev.Attrs["subject"] = e.Subject
	}
	if !e.NotAfter.IsZero() {
		ev.Attrs["not_after"] = e.NotAfter.UTC().Format(time.RFC3339)
	}
	if !e.EffectiveAt.IsZero() {
		ev.Attrs["effective_at"] = e.EffectiveAt.UTC().Format(time.RFC3339)
	}
	if len(e.Warnings) > 0 {
		ev.Level = slog.LevelWarn.String()
		ev.Attrs["warnings"] = strings.Join(e.Warnings, "; ")
	}
	r.Add(ev)
}
