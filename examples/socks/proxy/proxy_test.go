package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start serves a proxy whose Dial is a plain net.Dialer (or dial).
func start(t *testing.T, mod func(*Server)) string {
	t.Helper()
	var d net.Dialer
	s := &Server{Dial: d.DialContext}
	if mod != nil {
		mod(s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

func TestSOCKS5Protocol(t *testing.T) {
	echo := testenv.EchoServer(t)
	closed := func() string { // a port with nothing listening
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		a := l.Addr().String()
		l.Close()
		return a
	}()
	_, closedPort, _ := net.SplitHostPort(closed)
	port := func(p uint16) []byte { return []byte{byte(p >> 8), byte(p)} }
	cp := func() []byte { n, _ := strconv.Atoi(closedPort); return port(uint16(n)) }()
	tests := []struct {
		name    string
		auth    bool
		greet   []byte
		authReq []byte
		req     []byte
		wantRep int // -1: no request reply expected
		echo    bool
	}{
		{"ipv4 connect", false, []byte{5, 1, 0}, nil, append([]byte{5, 1, 0, 1, 127, 0, 0, 1}, port(echo.Port())...), repSucceeded, true},
		{"domain connect", false, []byte{5, 1, 0}, nil, append(append([]byte{5, 1, 0, 3, 9}, "localhost"...), port(echo.Port())...), repSucceeded, true},
		{"ipv6 refused", false, []byte{5, 1, 0}, nil, append([]byte{5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, cp...), repConnRefused, false},
		{"refused", false, []byte{5, 1, 0}, nil, append([]byte{5, 1, 0, 1, 127, 0, 0, 1}, cp...), repConnRefused, false},
		{"bind not supported", false, []byte{5, 1, 0}, nil, append([]byte{5, 2, 0, 1, 127, 0, 0, 1}, port(echo.Port())...), repCmdNotSupported, false},
		{"bad address type", false, []byte{5, 1, 0}, nil, []byte{5, 1, 0, 9, 0, 0}, repAddrNotSupported, false},
		{"password ok", true, []byte{5, 1, 2}, []byte{1, 1, 'u', 1, 'p'}, append([]byte{5, 1, 0, 1, 127, 0, 0, 1}, port(echo.Port())...), repSucceeded, true},
		{"password wrong", true, []byte{5, 1, 2}, []byte{1, 1, 'u', 1, 'x'}, nil, -1, false},
		{"no acceptable method", true, []byte{5, 1, 0}, nil, nil, -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := start(t, func(s *Server) {
				if tt.auth {
					s.Username, s.Password = "u", "p"
				}
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(tt.greet)
			sel := make([]byte, 2)
			if _, err := io.ReadFull(c, sel); err != nil {
				t.Fatal(err)
			}
			if tt.name == "no acceptable method" {
				if sel[1] != authNoAcceptable {
					t.Errorf("method %x, want ff", sel[1])
				}
				return
			}
			if tt.authReq != nil {
				c.Write(tt.authReq)
				st := make([]byte, 2)
				if _, err := io.ReadFull(c, st); err != nil {
					t.Fatal(err)
				}
				if (st[1] == 0) != (tt.wantRep >= 0) {
					t.Fatalf("auth status %d", st[1])
				}
				if tt.wantRep < 0 {
					return
				}
			}
			c.Write(tt.req)
			rep := make([]byte, 10)
			if _, err := io.ReadFull(c, rep); err != nil {
				t.Fatal(err)
			}
			if int(rep[1]) != tt.wantRep {
				t.Fatalf("reply %d, want %d", rep[1], tt.wantRep)
			}
			if tt.echo {
				c.Write([]byte("ping"))
				b := make([]byte, 4)
				if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
					t.Errorf("echo %q %v", b, err)
				}
			}
		})
	}
}

func TestHTTPConnect(t *testing.T) {
	echo := testenv.EchoServer(t)
	tests := []struct {
		name, req, want string
		auth            bool
	}{
		{"ok", "CONNECT " + echo.String() + " HTTP/1.1\r\nHost: x\r\n\r\n", "200", false},
		{"refused", "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n", "502", false},
		{"not connect", "GET http://example/ HTTP/1.1\r\nHost: example\r\n\r\n", "405", false},
		{"garbage", "HELLO\r\n\r\n", "400", false},
		{"auth missing", "CONNECT " + echo.String() + " HTTP/1.1\r\nHost: x\r\n\r\n", "407", true},
		{"auth ok", "CONNECT " + echo.String() + " HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n", "200", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := start(t, func(s *Server) {
				if tt.auth {
					s.Username, s.Password = "u", "p"
				}
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tt.req)
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.Contains(line, " "+tt.want+" ") {
				t.Errorf("status line %q (%v), want %s", line, err, tt.want)
			}
		})
	}
}

// TestCurl drives the proxy with the real curl, both as SOCKS5 (names
// resolved by the proxy) and as an HTTP proxy.
func TestCurl(t *testing.T) {
	testenv.RequireTool(t, "curl")
	curl, _ := testenv.LookTool("curl")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "corporate page") }))
	defer web.Close()
	addr := start(t, nil)
	_, port, _ := net.SplitHostPort(web.Listener.Addr().String())
	url := "http://localhost:" + port + "/"
	for _, args := range [][]string{
		{"--socks5-hostname", addr, url},
		{"--proxy", "http://" + addr, "--proxytunnel", url},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
		cancel()
		if err != nil || !bytes.Contains(out, []byte("corporate page")) {
			t.Errorf("curl %v: %v: %s", args, err, out)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add(append(append([]byte{5, 1, 0, 3, 9}, "localhost"...), 0, 80))
	f.Add([]byte{5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187})
	f.Add([]byte{5, 2, 0, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		target, err := ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err == nil {
			if _, _, serr := net.SplitHostPort(target); serr != nil {
				t.Fatalf("target %q accepted: %v", target, serr)
			}
		}
	})
}

func FuzzReadConnect(f *testing.F) {
	f.Add([]byte("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("CONNECT [::1]:22 HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ReadConnect(bufio.NewReader(bytes.NewReader(b)))
		if err == nil {
			if _, _, serr := net.SplitHostPort(req.Host); serr != nil {
				t.Fatalf("host %q accepted", req.Host)
			}
		}
	})
}
