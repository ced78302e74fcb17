package auth

import (
	"fmt"
	"log/slog"
	"strings"
)

// discardLogger is the default for every component: the library stays
// silent unless the caller injects a logger.
var discardLogger = slog.New(slog.DiscardHandler)

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return discardLogger
	}
	return l
}

// Secret holds a credential (password, token, cookie) so that it cannot end
// up in a log by accident: slog, fmt's %v/%s/%q/%#v and String all print a
// fixed placeholder. Use string(s) where the value is really needed.
type Secret string

const redacted = "[REDACTED]"

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer (for %#v).
func (Secret) GoString() string { return redacted }

// Format implements fmt.Formatter so every verb prints the placeholder.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText keeps the secret out of JSON and text encodings.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Redact returns a loggable stand-in for a credential: its kind and length
// only, never any of its characters ("" stays "").
func Redact(s string) string {
	if s == "" {
		return ""
	}
	kind := "secret"
	if LooksLikeJWT(s) {
		kind = "jwt"
	}
	return fmt.Sprintf("[%s len=%d]", kind, len(s))
}

// LooksLikeJWT reports whether s has the shape of a compact JWS: three
// base64url segments, the first an encoded JSON object ("eyJ" is the
// base64url of `{"`). It decides whether a password field carries a token.
func LooksLikeJWT(s string) bool {
	if !strings.HasPrefix(s, "eyJ") || strings.Count(s, ".") != 2 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}
