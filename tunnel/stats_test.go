package tunnel

import (
	"context"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// statsCounters returns every counter in st by field path: the uint64
// fields, nested structs included (the gauges are signed).
func statsCounters(st Stats) map[string]uint64 {
	out := make(map[string]uint64)
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		for i := range v.NumField() {
			f, name := v.Field(i), prefix+v.Type().Field(i).Name
			switch f.Kind() {
			case reflect.Uint64:
				out[name] = f.Uint()
			case reflect.Struct:
				walk(name+".", f)
			}
		}
	}
	walk("", reflect.ValueOf(st))
	return out
}

// TestStatsSurviveSessionEnd: when a session ends (its stack port closes,
// its DTLS/QUIC/CSTP link stops), no counter of Gateway.Stats goes down:
// the session's packets stay in the totals.
func TestStatsSurviveSessionEnd(t *testing.T) {
	echo := testenv.EchoServer(t)
	g, addr := startGateway(t, nil)
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS} {
		t.Run(mode.String(), func(t *testing.T) {
			c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = mode })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// By name, so the DNS proxy's counters move too.
			msg := make([]byte, 100_000)
			if err := echoTCP(ctx, c, net.JoinHostPort("echo", itoa(echo.Port())), msg); err != nil {
				t.Fatal(err)
			}
			info, ok := g.WhoIs(c.Addr())
			if !ok {
				t.Fatalf("no session holds %v", c.Addr())
			}
			before := g.Stats()
			if before.BytesIn < uint64(len(msg)) || before.BytesOut < uint64(len(msg)) || before.DNS.Queries == 0 {
				t.Fatalf("before the end: %d bytes in, %d out, %d DNS queries; want the echo's %d bytes each way and a query",
					before.BytesIn, before.BytesOut, before.DNS.Queries, len(msg))
			}
			reconnects := c.Reconnects()
			if err := g.Disconnect(info.ID); err != nil {
				t.Fatal(err)
			}
			if g.sessions.get(info.ID) != nil {
				t.Fatal("the session outlived Disconnect")
			}
			// tunnel.Client signs in again when the gateway ends its
			// session, possibly before Disconnect has returned (it did under
			// load, with the same address): wait for that, so the count
			// below is one session gone and one new.
			waitFor(t, func() bool { return c.Reconnects() > reconnects }, "the client to sign in again")
			after := g.Stats()
			if after.Sessions != before.Sessions {
				t.Errorf("%d sessions after the end and the client's new sign-in, %d before", after.Sessions, before.Sessions)
			}
			b, a := statsCounters(before), statsCounters(after)
			for name, v := range b {
				if a[name] < v {
					t.Errorf("%s went down when the session ended: %d -> %d", name, v, a[name])
				}
			}
		})
	}
}

// TestDTLSStatsExact: n packets each way over DTLS (pings of the gateway)
// move DTLSPacketsIn and DTLSPacketsOut by exactly n, and ending the
// session leaves both where they were.
func TestDTLSStatsExact(t *testing.T) {
	t.Parallel()
	g, addr := startGateway(t, func(c *Config) { c.DTLS = DTLSPSK })
	d := connectDTLS(t, addr)
	d.ping(t, g, 0) // DTLS is up and carrying data
	st0 := g.Stats()
	const n = 50
	for seq := range uint16(n) {
		d.ping(t, g, 1+seq)
	}
	st := g.Stats()
	if in, out := st.DTLSPacketsIn-st0.DTLSPacketsIn, st.DTLSPacketsOut-st0.DTLSPacketsOut; in != n || out != n {
		t.Fatalf("%d pings over DTLS: %d packets in, %d out; want %d each", n, in, out, n)
	}
	info, ok := g.WhoIs(d.tunAddr)
	if !ok {
		t.Fatalf("no session holds %v", d.tunAddr)
	}
	if err := g.Disconnect(info.ID); err != nil {
		t.Fatal(err)
	}
	if after := g.Stats(); after.DTLSPacketsIn != st.DTLSPacketsIn || after.DTLSPacketsOut != st.DTLSPacketsOut {
		t.Fatalf("DTLS packets after the session ended: %d in, %d out; want %d, %d as before",
			after.DTLSPacketsIn, after.DTLSPacketsOut, st.DTLSPacketsIn, st.DTLSPacketsOut)
	}
}
