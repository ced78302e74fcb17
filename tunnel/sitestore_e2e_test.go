package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// siteWait bounds a wait for a DISCONNECT: etcd on loopback carries a
// revocation in milliseconds. (waitFor's 10 s covers the rest: a stopped
// etcd is noticed at the next health announcement, siteAnnounceEvery,
// plus one call timeout.)
const siteWait = 10 * time.Second

// storeServer is one in-process gateway of a site with a real etcd store.
type storeServer struct {
	g    *Gateway
	addr string
	bans *auth.Bans
}

// startStoreSite starts n gateways sharing one session key and one etcd
// (each with its own etcd client, as separate servers have), and waits
// until each has reached the store.
func startStoreSite(t *testing.T, e *testenv.Etcd, n int) []storeServer {
	t.Helper()
	sealers := siteSealers(t, n)
	var out []storeServer
	for i := range n {
		out = append(out, startStoreServer(t, e, sealers[i], i, n, nil))
	}
	for _, s := range out {
		waitFor(t, func() bool { return s.g.Stats().SiteStore.Up }, "the store up on "+s.g.conf().Site.ServerName)
	}
	return out
}

// startStoreServer starts server i (0-based, named s<i+1>) of an n-server
// site with its own etcd client under the test's prefix (siteStore);
// mod adjusts its config last.
func startStoreServer(t *testing.T, e *testenv.Etcd, sealer *auth.Sealer, i, n int, mod func(*Config)) storeServer {
	t.Helper()
	st := siteStore(t, e)
	bans := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
	g, addr := startGateway(t, func(c *Config) {
		c.Sealer, c.Bans = sealer, bans
		c.Site = Site{Servers: n, ServerIndex: i + 1, ServerName: fmt.Sprintf("s%d", i+1), Store: st}
		if mod != nil {
			mod(c)
		}
	})
	return storeServer{g, addr, bans}
}

// siteStore is an etcd client of the members given under the test's own
// key prefix, closed after the gateways using it (cleanups run last-in
// first-out).
func siteStore(t *testing.T, members ...*testenv.Etcd) *sitestore.Store {
	t.Helper()
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.Endpoint)
	}
	name, _, _ := strings.Cut(t.Name(), "/") // subtests share their test's prefix
	st, err := sitestore.New(sitestore.Config{Endpoints: endpoints, Prefix: "/t/" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// ping checks that the tunnel still answers a DPD request.
func (c *testClient) ping() error {
	payload := []byte("still there?")
	if err := c.writeFrame(cstp.DPDReq, payload); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second) // DPD answers are immediate
	for time.Now().Before(deadline) {
		typ, p, err := c.readFrame(time.Until(deadline))
		if err != nil {
			return err
		}
		switch {
		case typ == cstp.DPDResp && bytes.Equal(p, payload):
			return nil
		case typ == cstp.DPDReq:
			_ = c.writeFrame(cstp.DPDResp, p)
		case typ == cstp.Disconnect:
			return errors.New("the gateway sent DISCONNECT")
		}
	}
	return errors.New("no DPD response")
}

// waitDisconnect waits for the gateway's CSTP DISCONNECT.
func (c *testClient) waitDisconnect(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(siteWait)
	for time.Now().Before(deadline) {
		typ, p, err := c.readFrame(time.Until(deadline))
		if err != nil {
			t.Fatalf("no DISCONNECT before the connection ended: %v", err)
		}
		if typ == cstp.Disconnect {
			return
		}
		if typ == cstp.DPDReq {
			_ = c.writeFrame(cstp.DPDResp, p)
		}
	}
	t.Fatalf("no DISCONNECT within %v", siteWait)
}

func sessionID(t *testing.T, g *Gateway, cookie string) string {
	t.Helper()
	sc, err := g.conf().Sealer.Open(cookie)
	if err != nil {
		t.Fatal(err)
	}
	return sc.ID
}

func runs(g *Gateway, id string) bool { return g.sessions.get(id) != nil }

// failSignIns makes n wrong-password sign-ins from src to addr.
func failSignIns(t *testing.T, src netip.Addr, addr string, n int) {
	t.Helper()
	for range n {
		if ck, err := signInOn(t, dialFrom(t, src, addr, nil), "alice", "wrong"); err != nil || ck != "" {
			t.Fatalf("wrong password from %v: cookie %q, err %v", src, ck, err)
		}
	}
}

// refusedBeforeTLS reports whether src's TLS handshake with addr fails
// (the pre-TLS ban check closes the connection).
func refusedBeforeTLS(t *testing.T, src netip.Addr, addr string) bool {
	t.Helper()
	return dialFrom(t, src, addr, nil).Handshake() != nil
}

// TestSiteStoreRevocation: disconnect issued on server A ends the session
// running on B, and its cookie is refused on C (and A).
func TestSiteStoreRevocation(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := startStoreSite(t, e, 3)
	tc := dial(t, s[1].addr, "alice", "secret")
	id := sessionID(t, s[1].g, tc.cookie)
	if err := tc.ping(); err != nil {
		t.Fatal(err)
	}
	if err := s[0].g.Disconnect(id); err != nil {
		t.Fatalf("Disconnect on A of a session running on B: %v", err)
	}
	tc.waitDisconnect(t)
	waitFor(t, func() bool { return !runs(s[1].g, id) }, "B to end the session")
	waitFor(t, func() bool { return s[2].g.isRevoked(id) }, "C to list the revocation")
	for i, srv := range []storeServer{s[2], s[0], s[1]} {
		if c, st := connectTunnel(t, srv.addr, tc.cookie); c != nil {
			t.Fatalf("server %d resumed the revoked cookie (status %d)", i, st)
		}
	}
	// Disconnect on the server running it revokes everywhere too.
	tc2 := dial(t, s[2].addr, "bob", "hunter2")
	id2 := sessionID(t, s[2].g, tc2.cookie)
	if err := s[2].g.Disconnect(id2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s[0].g.isRevoked(id2) }, "A to list C's revocation")
	if c, st := connectTunnel(t, s[0].addr, tc2.cookie); c != nil {
		t.Fatalf("A resumed a session revoked on C (status %d)", st)
	}
}

// TestSiteStoreBans: three wrong passwords on A ban the client on B and C
// (refused before TLS), other clients are unaffected, and lifting the ban
// on B lifts it everywhere.
func TestSiteStoreBans(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := startStoreSite(t, e, 3)
	bad := netip.MustParseAddr("127.0.0.5")
	failSignIns(t, bad, s[0].addr, 3)
	if !s[0].bans.Banned(bad) {
		t.Fatal("A did not ban the client")
	}
	for i, srv := range s[1:] {
		waitFor(t, func() bool { return srv.bans.Banned(bad) }, fmt.Sprintf("server %d to ban %v", i+2, bad))
		if !refusedBeforeTLS(t, bad, srv.addr) {
			t.Fatalf("server %d let the banned client through TLS", i+2)
		}
		dial(t, srv.addr, "bob", "hunter2") // 127.0.0.1 is not banned
	}
	if !s[1].g.LiftBan(bad) {
		t.Fatal("LiftBan on B: no active ban")
	}
	for i, srv := range s {
		waitFor(t, func() bool { return !srv.bans.Banned(bad) }, fmt.Sprintf("server %d to lift the ban", i+1))
	}
	if ck, err := signInOn(t, dialFrom(t, bad, s[2].addr, nil), "alice", "secret"); err != nil || ck == "" {
		t.Fatalf("after the lift the client cannot sign in on C: %q %v", ck, err)
	}
}

// TestSiteStoreOff: without a store, Disconnect of an unknown session is
// ErrNoSession and the store's stats are zero.
func TestSiteStoreOff(t *testing.T) {
	g, _ := startGateway(t, func(c *Config) { c.Sealer = siteSealers(t, 1)[0] })
	if err := g.Disconnect("no-such-session"); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Disconnect(unknown) = %v, want ErrNoSession", err)
	}
	if st := g.Stats().SiteStore; st != (SiteStoreStats{}) {
		t.Fatalf("SiteStore = %+v, want zero", st)
	}
}
