package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/gwtest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestWebsiteHostsGateway: the website keeps its answers (and hides the
// VPN), while tunnel clients that know the secret path reach the corporate
// network over TLS and QUIC through the program's own dialer.
func TestWebsiteHostsGateway(t *testing.T) {
	echo := testenv.EchoServer(t)
	c, k, err := certutil.SelfSigned([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := tls.X509KeyPair(c, k)
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	users, _ := auth.NewStaticUsers([]auth.StaticUser{{Name: "alice", Hash: string(h)}})
	var logs syncBuf
	srv, err := newServer(&cert, "/vpn-4f9c", users, gwtest.CorpDialer{}, []netip.Prefix{gwtest.CorpNet}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.serve(l, pc) }()
	defer func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	addr := l.Addr().String()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer hc.CloseIdleConnections()

	// The website answers as before; the VPN is invisible outside its path.
	for _, tc := range []struct {
		method, path, body, want string
		status                   int
	}{
		{"GET", "/", "", "Welcome", 200},
		{"GET", "/vpn-4f9c", "", "", 404}, // a browser, not an AnyConnect client
		{"POST", "/", `<config-auth client="vpn" type="init"></config-auth>`, "", 405},
		{"POST", "/contact", "name=bob", "", 404},
	} {
		req, _ := http.NewRequest(tc.method, "https://"+addr+tc.path, strings.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) || strings.Contains(string(b), "config-auth") {
			t.Errorf("%s %s: %d %q", tc.method, tc.path, resp.StatusCode, b)
		}
	}

	pin, _ := certutil.Pin(&cert)
	for _, mode := range []tunnel.TransportMode{tunnel.TransportTLS, tunnel.TransportQUIC} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// Without the secret path there is no VPN here.
			if _, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: "https://" + addr, Username: "alice", Password: "pw", PinSHA256: pin, Transport: mode}); err == nil {
				t.Fatal("connected without the secret path")
			}
			cl, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: "https://" + addr + "/vpn-4f9c", Username: "alice", Password: "pw", PinSHA256: pin, Transport: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			conn, err := cl.DialContext(ctx, "tcp", gwtest.Corp(echo).String())
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write([]byte("through the website"))
			b := make([]byte, len("through the website"))
			if _, err := io.ReadFull(conn, b); err != nil {
				t.Fatal(err)
			}
			conn.Close()
		})
	}
	if !strings.Contains(logs.String(), "audit: outbound") || !strings.Contains(logs.String(), gwtest.Corp(echo).String()) {
		t.Errorf("the custom dialer saw no flow; logs:\n%s", logs.String())
	}
	var ce *tunnel.ConfigError
	if _, err := newServer(&cert, "no-slash", users, gwtest.CorpDialer{}, nil, slog.Default()); !errors.As(err, &ce) {
		t.Errorf("bad secret path: %v", err)
	}
}
