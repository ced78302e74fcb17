package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/daemon/sitestore"
)

// answer is what a client sees when it presents a cookie: an HTTP status
// and reason, or noConnection when the gateway refuses the connection
// itself (before TLS or QUIC's handshake, or not listening; the reason
// then holds the client's error, and a wanted reason of "" matches any).
type answer struct {
	status int
	reason string
}

const noConnection = -1

// cstpAnswer presents cookie in a CSTP CONNECT.
func cstpAnswer(addr, cookie string) answer { return connectAnswer(addr, cookie, "") }

// dtlsAnswer presents cookie in a CSTP CONNECT that asks for DTLS, as
// openconnect does by default: the DTLS channel's keys come from this
// CONNECT, so its answer is the DTLS channel's answer.
func dtlsAnswer(addr, cookie string) answer {
	return connectAnswer(addr, cookie, "X-DTLS-Master-Secret: "+strings.Repeat("AB", 48)+"\r\n"+
		"X-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES128-GCM\r\n")
}

func connectAnswer(addr, cookie, extra string) answer {
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return answer{status: noConnection}
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\n%s\r\n", cookie, extra)
	req, _ := http.NewRequest(http.MethodConnect, "https://gw/CSCOSSLC/tunnel", nil)
	rsp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return answer{status: noConnection}
	}
	return answer{rsp.StatusCode, rsp.Header.Get("X-Reason")}
}

// connectIPAnswer presents cookie in a CONNECT-IP request over QUIC.
func connectIPAnswer(addr, cookie string) answer {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // loopback: a refusal is immediate
	defer cancel()
	req, err := connectip.NewRequest(ctx, uritemplate.MustNew("https://"+addr+ConnectIPPath))
	if err != nil {
		panic(err)
	}
	req.Header().Set("Cookie", "webvpn="+cookie)
	tr := &connectip.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}},
		QUICConfig:      &quic.Config{EnableDatagrams: true, InitialPacketSize: 1350},
	}
	conn, rsp, err := tr.Dial(req)
	if conn != nil {
		conn.Close()
	}
	if rsp == nil {
		return answer{status: noConnection, reason: fmt.Sprint(err)}
	}
	return answer{rsp.StatusCode, rsp.Header.Get("X-Reason")}
}

// TestSameAnswerOnEveryTransport drives each situation of a resumed
// session through CSTP and CONNECT-IP and expects one outcome: the
// session core gives one answer per situation (DTLS's answer is the CSTP
// CONNECT's that carries its offer: its keys come from there).
func TestSameAnswerOnEveryTransport(t *testing.T) {
	key := make([]byte, 32)
	sealer := func() *auth.Sealer {
		s, err := auth.NewSealer(nil, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name string
		// setup returns the gateway address and cookie to present.
		setup func(t *testing.T) (addr, cookie string)
		want  answer
	}{
		{"resume denied by policy", func(t *testing.T) (string, string) {
			var deny atomic.Bool
			_, addr := startGateway(t, func(c *Config) {
				c.Policy = auth.PolicyFunc(func(context.Context, *auth.Identity) error {
					if deny.Load() {
						return &auth.DeniedError{Reason: "removed from vpn-users"}
					}
					return nil
				})
			})
			cookie, _ := signIn(t, addr, "alice", "secret")
			deny.Store(true)
			return addr, cookie
		}, answer{http.StatusUnauthorized, "access denied: removed from vpn-users"}},
		{"revoked cookie", func(t *testing.T) (string, string) {
			g, addr := startGateway(t, func(c *Config) { c.Sealer = sealer() })
			cookie, _ := signIn(t, addr, "alice", "secret")
			for _, s := range g.Sessions() {
				if err := g.Disconnect(s.ID); err != nil {
					t.Fatal(err)
				}
			}
			return addr, cookie
		}, answer{http.StatusUnauthorized, refuseBadCookie.reason}},
		{"banned address", func(t *testing.T) (string, string) {
			bans := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
			_, addr := startGateway(t, func(c *Config) { c.Bans = bans })
			cookie, _ := signIn(t, addr, "alice", "secret")
			for range 3 {
				if ck, _ := signIn(t, addr, "alice", "wrong"); ck != "" {
					t.Fatal("wrong password accepted")
				}
			}
			if len(bans.List()) != 1 {
				t.Fatalf("bans: %+v", bans.List())
			}
			return addr, cookie
		}, answer{status: noConnection}},
		{"gateway full", func(t *testing.T) (string, string) {
			_, addrA := startGateway(t, func(c *Config) { c.Sealer = sealer() })
			_, addrB := startGateway(t, func(c *Config) { c.Sealer = sealer(); c.MaxSessions = 1 })
			cookie, _ := signIn(t, addrA, "alice", "secret")           // sealed at A
			if ck, _ := signIn(t, addrB, "bob", "hunter2"); ck == "" { // B is now full
				t.Fatal("sign-in at B failed")
			}
			return addrB, cookie
		}, answer{http.StatusServiceUnavailable, refuseFull.reason}},
		{"strict mode, site store unreachable", func(t *testing.T) (string, string) {
			// A real etcd client whose etcd is not there (port 1 refuses).
			st, err := sitestore.New(sitestore.Config{Endpoints: []string{"http://127.0.0.1:1"}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			_, addrA := startGateway(t, func(c *Config) { c.Sealer = sealer() })
			gB, addrB := startGateway(t, func(c *Config) {
				c.Sealer = sealer()
				c.Site = Site{ServerName: "b", Store: st, Strict: true}
			})
			cookie, _ := signIn(t, addrA, "alice", "secret") // sealed at A, resumed at B
			waitFor(t, func() bool { return gB.site.down.Load() }, "B to find the store unreachable")
			return addrB, cookie
		}, answer{http.StatusServiceUnavailable, refuseSiteStrict.reason}},
		{"drain", func(t *testing.T) (string, string) {
			g, addr := startGateway(t, nil)
			cookie, _ := signIn(t, addr, "alice", "secret")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := g.Shutdown(ctx); err != nil && !errors.Is(err, ErrClosed) {
				t.Fatal(err)
			}
			return addr, cookie
		}, answer{status: noConnection}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, tr := range []struct {
				name string
				ask  func(addr, cookie string) answer
			}{{"CSTP", cstpAnswer}, {"DTLS", dtlsAnswer}, {"CONNECT-IP", connectIPAnswer}} {
				// Each transport meets the situation afresh (a denied
				// resume ends the session, for one).
				addr, cookie := tc.setup(t)
				if cookie == "" {
					t.Fatal("no cookie")
				}
				got := tr.ask(addr, cookie)
				if got.status != tc.want.status || !strings.Contains(got.reason, tc.want.reason) {
					t.Errorf("%s: %d %q, want %d %q", tr.name, got.status, got.reason, tc.want.status, tc.want.reason)
				}
			}
		})
	}
}
