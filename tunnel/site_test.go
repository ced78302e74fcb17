package tunnel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/underpass/underpass/auth"
)

// siteSealers returns n sealers sharing one random key: the servers of a site.
func siteSealers(t *testing.T, n int) []*auth.Sealer {
	t.Helper()
	key := make([]byte, auth.SealerKeySize)
	_, _ = rand.Read(key)
	var out []*auth.Sealer
	for range n {
		s, err := auth.NewSealer(nil, key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// TestSignInSealsTheAddress: the address is leased at sign-in, sealed into
// the cookie, and the same one the tunnel is given.
func TestSignInSealsTheAddress(t *testing.T) {
	sealer := siteSealers(t, 1)[0]
	g, addr := startGateway(t, func(c *Config) { c.Sealer = sealer })
	cookie, body := signIn(t, addr, "alice", "secret")
	if cookie == "" {
		t.Fatalf("sign-in: %s", body)
	}
	sc, err := sealer.Open(cookie)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.Address.IsValid() {
		t.Fatal("the sealed cookie carries no address")
	}
	if info, ok := g.WhoIs(sc.Address); !ok || info.ID != sc.ID {
		t.Fatalf("WhoIs(%v) before CONNECT = %+v, %v; want session %s", sc.Address, info, ok, sc.ID)
	}
	tc, st := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatalf("CONNECT: %d", st)
	}
	if tc.tunAddr != sc.Address {
		t.Fatalf("tunnel address %v, sealed %v", tc.tunAddr, sc.Address)
	}
}

// TestResumeClaimsTheSealedAddress: a second server of the site, whose pool
// is warmed so that its next free address differs, gives a resumed
// session the address sealed in its cookie; a resume whose address a live
// session holds there is refused (503), never given another address, and
// succeeds once that session is gone.
func TestResumeClaimsTheSealedAddress(t *testing.T) {
	ss := siteSealers(t, 2)
	_, addr1 := startGateway(t, func(c *Config) { c.Sealer = ss[0] })
	g2, addr2 := startGateway(t, func(c *Config) { c.Sealer = ss[1] })
	// Warm server 2: its first sign-ins take the addresses server 1
	// hands out first as well.
	var warm []*testClient
	for range 3 {
		warm = append(warm, dial(t, addr2, "bob", "hunter2"))
	}
	cookie, body := signIn(t, addr1, "alice", "secret")
	if cookie == "" {
		t.Fatalf("sign-in: %s", body)
	}
	sc, _ := ss[0].Open(cookie)
	holder := -1
	for i, w := range warm {
		if w.tunAddr == sc.Address {
			holder = i
		}
	}
	if holder < 0 {
		t.Fatalf("server 2's warm sessions %v do not hold server 1's first address %v: the test would prove nothing",
			[]netip.Addr{warm[0].tunAddr, warm[1].tunAddr, warm[2].tunAddr}, sc.Address)
	}
	if tc, st := connectTunnel(t, addr2, cookie); tc != nil || st != 503 {
		t.Fatalf("resume onto a held address: status %d (tunnel %v), want 503", st, tc != nil)
	}
	// The holder ends; the resume now gets exactly the sealed address.
	info, _ := g2.WhoIs(sc.Address)
	if err := g2.Disconnect(info.ID); err != nil {
		t.Fatal(err)
	}
	tc, st := connectTunnel(t, addr2, cookie)
	if tc == nil {
		t.Fatalf("resume after the holder left: %d", st)
	}
	if tc.tunAddr != sc.Address {
		t.Fatalf("resumed with %v, sealed %v", tc.tunAddr, sc.Address)
	}
	// And a new sign-in on server 2 never gets it while the session lives.
	nc := dial(t, addr2, "bob", "hunter2")
	if nc.tunAddr == sc.Address {
		t.Fatalf("a new session got the resumed session's address %v", nc.tunAddr)
	}
}

// TestSiteStrides: each server hands out its own stride first.
func TestSiteStrides(t *testing.T) {
	tests := []struct {
		site Site
		pool string
		want string // the first client address
	}{
		{Site{}, "10.9.0.0/24", "10.9.0.2"},
		{Site{Servers: 1, ServerIndex: 1}, "10.9.0.0/24", "10.9.0.2"},
		// 253 offsets (.1 to .254, the gateway .1 reserved) in 2 strides of 127: the second starts at .128.
		{Site{Servers: 2, ServerIndex: 2}, "10.9.0.0/24", "10.9.0.128"},
		// 65,534 offsets in 4 strides of 16,384: the third starts at offset 32,768.
		{Site{Servers: 4, ServerIndex: 3}, "169.254.0.0/16", "169.254.128.1"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.site, tt.pool), func(t *testing.T) {
			g, err := New(Config{Certificate: testCert, Authenticator: passwords{"alice": "secret"},
				Pool: netip.MustParsePrefix(tt.pool), Site: tt.site, DisableDNSProxy: true})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			s, _, err := g.newSession(&auth.Identity{User: "alice"}, "ua", netip.MustParseAddrPort("192.0.2.1:1"))
			if err != nil {
				t.Fatal(err)
			}
			if s.addr != netip.MustParseAddr(tt.want) {
				t.Fatalf("first address %v, want %s", s.addr, tt.want)
			}
		})
	}
	// Without an index the stride comes from the server name, stably.
	a, b := Site{Servers: 8, ServerName: "gw-a"}, Site{Servers: 8, ServerName: "gw-a"}
	if _, oa := a.stride(); func() int { _, ob := b.stride(); return ob }() != oa || oa < 0 || oa >= 8 {
		t.Fatalf("hashed stride %d unstable or out of range", oa)
	}
	spread := map[int]bool{}
	for i := range 16 {
		_, o := Site{Servers: 8, ServerName: fmt.Sprint("gw-", i)}.stride()
		spread[o] = true
	}
	if len(spread) < 4 {
		t.Fatalf("16 server names hash onto only %d of 8 strides", len(spread))
	}
}

func TestSiteValidation(t *testing.T) {
	base := func() Config { return Config{Authenticator: passwords{}} }
	tests := []struct {
		name  string
		mod   func(*Config)
		field string // "" = valid
	}{
		{"single server", func(c *Config) {}, ""},
		{"site of 4", func(c *Config) { c.Site = Site{Servers: 4, ServerIndex: 4} }, ""},
		{"site with hashed index", func(c *Config) { c.Site = Site{Servers: 4, ServerName: "a"} }, ""},
		{"negative servers", func(c *Config) { c.Site.Servers = -1 }, "Site.Servers"},
		{"index past servers", func(c *Config) { c.Site = Site{Servers: 2, ServerIndex: 3} }, "Site.ServerIndex"},
		{"negative index", func(c *Config) { c.Site = Site{Servers: 2, ServerIndex: -1} }, "Site.ServerIndex"},
		{"index without servers", func(c *Config) { c.Site.ServerIndex = 1 }, "Site.ServerIndex"},
		{"more servers than addresses", func(c *Config) {
			c.Pool = netip.MustParsePrefix("10.0.0.0/29")
			c.Site.Servers = 6
		}, "Site.Servers"},
		// /24: 253 client addresses.
		{"site fits the pool", func(c *Config) {
			c.Pool, c.MaxSessions, c.Site.Servers = netip.MustParsePrefix("10.0.0.0/24"), 126, 2
		}, ""},
		{"site overflows the pool", func(c *Config) {
			c.Pool, c.MaxSessions, c.Site.Servers = netip.MustParsePrefix("10.0.0.0/24"), 127, 2
		}, "Pool"},
		{"one server overflows the pool", func(c *Config) {
			c.Pool, c.MaxSessions = netip.MustParsePrefix("10.0.0.0/24"), 254
		}, "Pool"},
		{"unknowable without MaxSessions", func(c *Config) { c.Site.Servers = 64 }, ""},
		// A /16 holds 65,533 clients: 64,000 on one server, not on two.
		{"R-C1 per server", func(c *Config) { c.MaxSessions = 64000 }, ""},
		{"R-C1 is not per site", func(c *Config) { c.MaxSessions, c.Site.Servers = 64000, 2 }, "Pool"},
		{"proxy protocol network", func(c *Config) {
			c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
			c.BanExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		}, ""},
		{"proxy protocol host bits", func(c *Config) {
			c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("10.1.0.7/24")}
		}, "ProxyProtocolFrom"},
		{"ban exempt invalid", func(c *Config) { c.BanExempt = []netip.Prefix{{}} }, "BanExempt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate: %v; want a problem with %s", err, tt.field)
			}
			t.Log(err)
		})
	}
}
