package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/underpass/underpass/tunnel"
)

// full is a tunnel.Client session.
type full struct {
	c *tunnel.Client
	d *severDialer
}

// severDialer is the Client's dialer for the TLS transport: it remembers
// the latest connection so that a reconnect storm can cut it, and the
// Client reconnects by itself with its cookie, as after a network change.
type severDialer struct {
	d    net.Dialer
	mu   sync.Mutex
	conn net.Conn
}

// DialContext implements netstack.Dialer.
func (d *severDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, address)
	if err == nil {
		d.mu.Lock()
		d.conn = c
		d.mu.Unlock()
	}
	return c, err
}

// sever closes the latest connection; false when there is none.
func (d *severDialer) sever() bool {
	d.mu.Lock()
	c := d.conn
	d.conn = nil
	d.mu.Unlock()
	if c == nil {
		return false
	}
	c.Close()
	return true
}

// dialFull signs a tunnel.Client in over the configured transport.
func dialFull(ctx context.Context, cfg *Config, n int) (*full, error) {
	tr := tunnel.TransportTLS
	if cfg.Mode == ModeQUIC {
		tr = tunnel.TransportQUIC
	}
	d := &severDialer{}
	cc := tunnel.ClientConfig{
		Server: cfg.Server, Transport: tr, PinSHA256: cfg.PinSHA256,
		Username: cfg.Username, Password: cfg.Password, Dialer: d,
		DeviceID: fmt.Sprintf("loadgen-%d", n),
	}
	if tok := cfg.Token; tok != "" {
		cc.TokenSource = func(context.Context) (string, error) { return tok, nil }
	}
	c, err := tunnel.Dial(ctx, cc)
	if err != nil {
		var ae *tunnel.AuthError
		if errors.As(err, &ae) {
			return nil, &refusedError{ae.Reason}
		}
		return nil, err
	}
	return &full{c: c, d: d}, nil
}

func (s *full) done() <-chan struct{} { return s.c.Done() }

// reconnectPoll is how often a storm checks that a client is back: short
// against a reconnect (a TLS handshake and CONNECT, milliseconds on a LAN),
// cheap for thousands of clients.
const reconnectPoll = 20 * time.Millisecond

// reconnect cuts the TLS connection and waits for the Client to come
// back on its own with its cookie. (Config refuses a storm of QUIC
// sessions: their UDP socket is the Client's own.)
func (s *full) reconnect(ctx context.Context) error {
	if s.c.Transport() != "tls" {
		return fmt.Errorf("a %s session cannot be made to reconnect", s.c.Transport())
	}
	n := s.c.Reconnects()
	if !s.d.sever() {
		return errors.New("no connection to cut")
	}
	t := time.NewTicker(reconnectPoll)
	defer t.Stop()
	for s.c.Reconnects() == n {
		select {
		case <-t.C:
		case <-s.c.Done():
			return fmt.Errorf("client stopped: %w", s.c.Err())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *full) dial(ctx context.Context, target string) (net.Conn, error) {
	return s.c.DialContext(ctx, "tcp", target)
}

func (s *full) close() { _ = s.c.Close() }
