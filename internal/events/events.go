// Package events keeps the recent operator-relevant events of a running
// gateway (sign-ins, failures, bans, connects, disconnects, takeovers,
// session ends) in a bounded ring, so `underpass show events` can answer
// "what just happened?". The gateway's come as typed records
// (tunnel.Config.Events → Ring.Record); the daemon's own (reloads,
// certificates) by tapping its slog records.
package events

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/underpass/underpass/tunnel"
)

// DefaultSize is the ring's capacity: at a few hundred bytes an event,
// 1000 events is under half a MiB and covers minutes of a busy gateway.
const DefaultSize = 1000

// Event is one recorded log record.
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

// Recorded lists the daemon's own log messages that become events (the
// gateway's come typed, through Record).
var Recorded = map[string]bool{
	"configuration reloaded": true, "certificate loaded": true,
	"certificate staged": true, "staged certificate activated": true,
}

// Record adds one of the gateway's typed records (tunnel.Config.Events),
// under the names its log lines use: "telemetry" with op=connect or
// op=disconnect, "sign-in", "sign-in failed", "client banned", "session
// taken over", "session ended". No log text is parsed.
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
	if e.Kind == tunnel.EventDisconnect || e.Kind == tunnel.EventSessionEnd {
		set("bytes_in", strconv.FormatUint(e.BytesIn, 10))
		set("bytes_out", strconv.FormatUint(e.BytesOut, 10))
	}
	r.Add(ev)
}

// Tap returns a slog.Handler that passes every record to next and copies
// the Recorded ones into r.
func Tap(next slog.Handler, r *Ring) slog.Handler { return &tap{next: next, r: r} }

type tap struct {
	next  slog.Handler
	r     *Ring
	attrs []slog.Attr
}

func (t *tap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || t.next.Enabled(ctx, l)
}

func (t *tap) Handle(ctx context.Context, rec slog.Record) error {
	if Recorded[rec.Message] {
		e := Event{Time: rec.Time, Level: rec.Level.String(), Msg: rec.Message, Attrs: map[string]string{}}
		for _, a := range t.attrs {
			e.Attrs[a.Key] = a.Value.String()
		}
		rec.Attrs(func(a slog.Attr) bool { e.Attrs[a.Key] = a.Value.String(); return true })
		t.r.Add(e)
	}
	if t.next.Enabled(ctx, rec.Level) {
		return t.next.Handle(ctx, rec)
	}
	return nil
}

func (t *tap) WithAttrs(as []slog.Attr) slog.Handler {
	return &tap{next: t.next.WithAttrs(as), r: t.r, attrs: append(append([]slog.Attr(nil), t.attrs...), as...)}
}

func (t *tap) WithGroup(name string) slog.Handler {
	return &tap{next: t.next.WithGroup(name), r: t.r, attrs: t.attrs}
}
