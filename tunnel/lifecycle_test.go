package tunnel

import (
	"bufio"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/cstp"
)

// newBareGateway is a gateway that serves nothing: for driving the session
// core and the DTLS server directly.
func newBareGateway(t *testing.T) *Gateway {
	t.Helper()
	g, err := New(Config{
		Certificate:     testCert,
		Authenticator:   passwords{"alice": "secret"},
		DPD:             2 * time.Second,
		DisableDNSProxy: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// TestTakeoverCutsOffAStuckConnection: a takeover waits at most a second
// for the older connection's goodbye; one stuck writing to a client that
// no longer reads is cut off, and the newer connection gets the session.
// (Found by review: register used to wait without a bound.)
func TestTakeoverCutsOffAStuckConnection(t *testing.T) {
	g := newBareGateway(t)
	s, _, err := g.newSession(&auth.Identity{User: "alice"}, "ua", netip.MustParseAddrPort("192.0.2.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	addr, rf := g.prepare(s)
	if rf != nil {
		t.Fatal(rf.reason)
	}
	srv, cli := net.Pipe() // the old client never reads cli: writes block
	defer cli.Close()
	old := newCSTPLink(s, srv, bufio.NewReader(srv))
	if !g.register(old, "tls", netip.AddrPort{}, netip.AddrPort{}) {
		t.Fatal("register old")
	}
	go old.run(old)
	for i := range 5 {
		if err := s.port.Inject(icmpEcho(addr, g.Addr(), 1, uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the old data loop is stuck writing the first reply
	srv2, cli2 := net.Pipe()
	defer cli2.Close()
	nl := newCSTPLink(s, srv2, bufio.NewReader(srv2))
	done := make(chan bool, 1)
	go func() { done <- g.register(nl, "tls", netip.AddrPort{}, netip.AddrPort{}) }()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("the newer connection was refused")
		}
		go nl.run(nl)
	case <-time.After(5 * time.Second):
		old.abort()
		t.Fatal("the takeover is still waiting for the stuck connection after 5 s")
	}
}

// TestDTLSOfferAndWithdrawConcurrently: a CSTP connection that ends while
// its DTLS offer is being published leaves no offer behind (and no race:
// the offer is set before the connection registers).
func TestDTLSOfferAndWithdrawConcurrently(t *testing.T) {
	g := newBareGateway(t)
	l := unregisteredLink(t, g)
	l.dtlsOffer = &dtlsOffer{id: "x"}
	close(l.done) // ended
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); g.offerDTLS(l) }()
	go func() { defer wg.Done(); g.withdrawDTLS(l) }()
	wg.Wait()
	if g.dtlsLink([]byte("x")) != nil {
		t.Error("an ended connection's DTLS offer is still published")
	}
}

// unregisteredLink is a CSTP connection of a new session that was never
// registered: enough to publish and withdraw a DTLS offer.
func unregisteredLink(t *testing.T, g *Gateway) *cstpLink {
	t.Helper()
	s, _, err := g.newSession(&auth.Identity{User: "alice"}, "ua", netip.MustParseAddrPort("192.0.2.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := net.Pipe()
	t.Cleanup(func() { cli.Close() })
	l := newCSTPLink(s, srv, bufio.NewReader(srv))
	l.g, l.done = g, make(chan struct{})
	return l
}

// feedPC hands ServeDTLS a fixed list of datagrams, then blocks until Close.
type feedPC struct {
	dgs   [][]byte
	froms []*net.UDPAddr
	i     int
	done  chan struct{}
	once  sync.Once
}

func (f *feedPC) ReadFrom(b []byte) (int, net.Addr, error) {
	if f.i < len(f.dgs) {
		n := copy(b, f.dgs[f.i])
		a := f.froms[f.i]
		f.i++
		return n, a, nil
	}
	<-f.done
	return 0, nil, net.ErrClosed
}
func (f *feedPC) WriteTo(b []byte, _ net.Addr) (int, error) { return len(b), nil }
func (f *feedPC) Close() error                              { f.once.Do(func() { close(f.done) }); return nil }
func (f *feedPC) LocalAddr() net.Addr                       { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4443} }
func (f *feedPC) SetDeadline(time.Time) error               { return nil }
func (f *feedPC) SetReadDeadline(time.Time) error           { return nil }
func (f *feedPC) SetWriteDeadline(time.Time) error          { return nil }

// clientHello is a minimal DTLS 1.2 ClientHello carrying sid.
func clientHello(sid []byte) []byte {
	body := []byte{0xfe, 0xfd}
	body = append(body, make([]byte, 32)...)
	body = append(body, byte(len(sid)))
	body = append(body, sid...)
	body = append(body, 0)             // cookie
	body = append(body, 0, 2, 0, 0xa8) // TLS_PSK_WITH_AES_128_GCM_SHA256
	body = append(body, 1, 0)          // no compression
	hs := []byte{1, 0, 0, byte(len(body)), 0, 0, 0, 0, 0, 0, 0, byte(len(body))}
	hs = append(hs, body...)
	rec := []byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(len(hs))}
	return append(rec, hs...)
}

// TestDTLSAcceptCopiesTheClientHello: the DTLS server reads the next
// datagram into the same buffer while a handshake starts; the handshake
// must work on its own copy (the race detector catches a shared one).
func TestDTLSAcceptCopiesTheClientHello(t *testing.T) {
	g := newBareGateway(t)
	l := unregisteredLink(t, g)
	sid := make([]byte, 32)
	sid[0] = 7
	l.dtlsOffer = &dtlsOffer{id: string(sid), psk: make([]byte, 32), mtu: 1400}
	l.dtlsOffer.params.PSK, l.dtlsOffer.params.AppID = true, sid
	g.offerDTLS(l)
	f := &feedPC{done: make(chan struct{})}
	f.dgs = append(f.dgs, clientHello(sid))
	f.froms = append(f.froms, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 1000})
	for i := range 50 {
		f.dgs = append(f.dgs, []byte{23, 0xfe, 0xfd, byte(i)})
		f.froms = append(f.froms, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 1000 + i})
	}
	errc := make(chan error, 1)
	go func() { errc <- g.ServeDTLS(f) }()
	waitFor(t, func() bool { return g.Stats().DTLSDropped >= 50 }, "the junk after the ClientHello to be read")
	g.Close()
	<-errc
}

// TestEventsHook: Config.Events receives the session core's typed records
// in order: a sign-in, a connect, and on the client's logoff a disconnect
// and the session's end, each with its EndReason.
func TestEventsHook(t *testing.T) {
	var mu sync.Mutex
	var got []Event
	g, addr := startGateway(t, func(c *Config) {
		c.Events = func(e Event) { mu.Lock(); got = append(got, e); mu.Unlock() }
	})
	if ck, _ := signIn(t, addr, "alice", "wrong"); ck != "" {
		t.Fatal("wrong password accepted")
	}
	tc := dial(t, addr, "alice", "secret")
	if err := tc.writeFrame(cstp.Disconnect, cstp.DisconnectPayload(cstp.ReasonUserDisconnect, "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(g.Sessions()) == 0 }, "the session to end")
	mu.Lock()
	defer mu.Unlock()
	var kinds []EventKind
	for _, e := range got {
		kinds = append(kinds, e.Kind)
		if e.Time.IsZero() || (e.Kind != EventSignInFailed && e.User != "alice") {
			t.Errorf("event %+v", e)
		}
	}
	want := []EventKind{EventSignInFailed, EventSignIn, EventConnect, EventDisconnect, EventSessionEnd}
	if !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	if got[3].Reason != EndLogoff || got[4].Reason != EndLogoff || got[2].Transport != "tls" {
		t.Errorf("disconnect %+v, session end %+v", got[3], got[4])
	}
}
