package acdtls

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// LevelTrace is the slog level of pion's Trace messages: below Debug, as
// pion traces every flight and record.
const LevelTrace = slog.LevelDebug - 4

// PionLogger adapts l to pion's logging.LoggerFactory: each pion scope
// ("dtls", ...) becomes a "scope" attribute, pion's Trace maps to
// LevelTrace and the other levels to their slog namesakes. A nil l gives a
// factory that discards everything, so pion never writes to stderr on its
// own (its default factory does).
func PionLogger(l *slog.Logger) logging.LoggerFactory {
	if l == nil {
		return discardFactory{}
	}
	return slogFactory{l}
}

type slogFactory struct{ l *slog.Logger }

func (f slogFactory) NewLogger(scope string) logging.LeveledLogger {
	return slogLeveled{f.l.With("scope", scope)}
}

type slogLeveled struct{ l *slog.Logger }

func (s slogLeveled) log(level slog.Level, msg string) {
	s.l.Log(context.Background(), level, msg)
}

func (s slogLeveled) logf(level slog.Level, format string, args ...any) {
	if s.l.Enabled(context.Background(), level) {
		s.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}

func (s slogLeveled) Trace(msg string)                  { s.log(LevelTrace, msg) }
func (s slogLeveled) Tracef(format string, args ...any) { s.logf(LevelTrace, format, args...) }
func (s slogLeveled) Debug(msg string)                  { s.log(slog.LevelDebug, msg) }
func (s slogLeveled) Debugf(format string, args ...any) { s.logf(slog.LevelDebug, format, args...) }
func (s slogLeveled) Info(msg string)                   { s.log(slog.LevelInfo, msg) }
func (s slogLeveled) Infof(format string, args ...any)  { s.logf(slog.LevelInfo, format, args...) }
func (s slogLeveled) Warn(msg string)                   { s.log(slog.LevelWarn, msg) }
func (s slogLeveled) Warnf(format string, args ...any)  { s.logf(slog.LevelWarn, format, args...) }
func (s slogLeveled) Error(msg string)                  { s.log(slog.LevelError, msg) }
func (s slogLeveled) Errorf(format string, args ...any) { s.logf(slog.LevelError, format, args...) }

type discardFactory struct{}

func (discardFactory) NewLogger(string) logging.LeveledLogger { return discardLogger{} }

type discardLogger struct{}

func (discardLogger) Trace(string)          {}
func (discardLogger) Tracef(string, ...any) {}
func (discardLogger) Debug(string)          {}
func (discardLogger) Debugf(string, ...any) {}
func (discardLogger) Info(string)           {}
func (discardLogger) Infof(string, ...any)  {}
func (discardLogger) Warn(string)           {}
func (discardLogger) Warnf(string, ...any)  {}
func (discardLogger) Error(string)          {}
func (discardLogger) Errorf(string, ...any) {}
