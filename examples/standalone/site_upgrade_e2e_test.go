package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// upgradeClients is how many openconnect clients ride through the rolling
// upgrade: two per server under leastconn, so every server holds sessions
// when its turn comes.
const upgradeClients = 6

// upgradeServer is one `underpass serve` of TestSiteRollingUpgrade, in the
// gw namespace behind HAProxy.
type upgradeServer struct {
	name   string // site.server_name, and HAProxy's server name
	listen string // the VPN port on gw's loopback (PROXY protocol from HAProxy)
	admin  string // admin_http: /readyz for HAProxy's checks, /metrics
	dir    string // config file, admin socket, state
	proc   *testenv.Proc
}

func (s *upgradeServer) sock() string { return filepath.Join(s.dir, "admin.sock") }

// TestSiteRollingUpgrade ("Operators", issue 12): a three-server site
// (one etcd, one session key, one site configuration pushed once) behind
// HAProxy (send-proxy-v2, leastconn, checks on /readyz) is upgraded one
// server at a time, as README's "Rolling upgrade" says: `underpass server
// stop` drains it, the new binary starts with the same local file, and the
// next server goes only once HAProxy's check and the server's health
// record (up, running the site configuration) show it back. Afterwards
// every openconnect client is still connected with its original address
// and session (no new sign-in on any server, counted), every server runs
// the same site configuration, and `status --site` lists the three up.
//
// The new version is the same code linked with another version
// (-X main.buildVersion=v-next): what changes between releases is not
// what this test is about, but each step must show the new version in
// the site's view, and the middle of the upgrade mixed versions.
func TestSiteRollingUpgrade(t *testing.T) {
	bin, tp, web, cert, hash := e2eBase(t, "etcd", "haproxy")
	const nextVersion = "v-next"
	next := testenv.BuildBinaryLDFlags(t, "./examples/standalone", "-X main.buildVersion="+nextVersion)
	startEtcdIn(t, tp.GW)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute) // the whole test
	defer cancel()
	dir := t.TempDir()
	// drain_delay 2s: HAProxy below checks every 300 ms and takes a server
	// out after 2 failures, well inside it.
	siteDoc := writeFile(t, dir, "site.yaml", fmt.Sprintf(`split_include: [198.19.0.0/24]
dns: [198.19.0.2]
dpd: 10s
drain_delay: 2s
proxy_protocol_from: [127.0.0.1/32]
users:
  - {name: alice, password_hash: %q}
`, hash))

	var servers []*upgradeServer
	for i := 1; i <= 3; i++ {
		s := &upgradeServer{name: fmt.Sprint("gw-", i), listen: fmt.Sprintf("127.0.0.1:%d", 4440+i),
			admin: fmt.Sprintf("127.0.0.1:%d", 9450+i), dir: filepath.Join(dir, fmt.Sprint("gw-", i))}
		if err := os.Mkdir(s.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		siteServerFile(t, s.dir, s.name, s.listen, cert, fmt.Sprintf("disable_udp: true\nadmin_http: %q\n", s.admin))
		servers = append(servers, s)
	}
	cfg := func(s *upgradeServer) string { return filepath.Join(s.dir, "underpass.yaml") }
	// The site configuration, pushed once before any server starts.
	if out, err := tp.GW.Exec(ctx, bin, "site", "push", "-config", cfg(servers[0]), siteDoc).CombinedOutput(); err != nil {
		t.Fatalf("site push: %v\n%s", err, out)
	}
	start := func(s *upgradeServer, bin string) {
		cmd := tp.GW.Exec(context.Background(), bin, "serve", "-config", cfg(s), "-admin-socket", s.sock())
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+s.dir)
		s.proc = tp.GW.StartCmd(t, cmd)
		if err := tp.GW.WaitTCP(ctx, s.listen, s.proc); err != nil {
			t.Fatalf("%s did not listen: %v\n%s", s.name, err, s.proc.Tail(20))
		}
	}
	for _, s := range servers {
		start(s, bin)
	}

	var hap strings.Builder
	fmt.Fprintf(&hap, `defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 3
    option redispatch
frontend vpn
    bind %s
    default_backend site
backend site
    balance leastconn
    option httpchk GET /readyz
    default-server inter 300ms fall 2 rise 2 send-proxy-v2
`, gwListen)
	for _, s := range servers {
		_, port, _ := net.SplitHostPort(s.admin)
		fmt.Fprintf(&hap, "    server %s %s check port %s\n", s.name, s.listen, port)
	}
	lb := testenv.HAProxy(t, tp.GW, hap.String(), gwListen)

	// tryStatus runs `status --site --json` on s.
	tryStatus := func(s *upgradeServer) (admin.SiteStatus, error) {
		code, out, errs := runCLI("status", "--site", "--json", "-admin-socket", s.sock())
		var st admin.SiteStatus
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil {
			return st, fmt.Errorf("status --site on %s: exit %d\n%s%s", s.name, code, out, errs)
		}
		return st, nil
	}
	status := func(s *upgradeServer) admin.SiteStatus {
		t.Helper()
		st, err := tryStatus(s)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// back waits until HAProxy's checks pass for s and its health record is
	// up, started after since, and running the site configuration cfg and
	// version ("": any).
	back := func(s *upgradeServer, since time.Time, cfg, version string) admin.SiteServer {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // rise 2 × 300 ms, and an announcement every 3 s
		for {
			up, err := lb.ServersUp("site")
			st, serr := tryStatus(s) // the admin socket comes up after the VPN port
			var rec admin.SiteServer
			for _, r := range st.Servers {
				if r.Server == s.name {
					rec = r
				}
			}
			if err == nil && serr == nil && up[s.name] && rec.State == admin.StateUp && !rec.Started.Before(since.Truncate(time.Second)) &&
				rec.Config != "" && (cfg == "" || rec.Config == cfg) && (version == "" || rec.Version == version) {
				return rec
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not back after 30 s: HAProxy %v (%v), record %+v (%v)\n%s", s.name, up, err, rec, serr, s.proc.Tail(20))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t0 := time.Now().Add(-time.Minute)
	rec1 := back(servers[0], t0, "", "")
	siteCfg, oldVersion := rec1.Config, rec1.Version
	if oldVersion == nextVersion {
		t.Fatalf("the first binary already says %s", nextVersion)
	}
	for _, s := range servers[1:] {
		back(s, t0, siteCfg, oldVersion)
	}

	// Six clients through HAProxy; leastconn spreads their tunnels.
	type client struct {
		oc   *testenv.OCSession
		addr netip.Addr
	}
	var clients []client
	for range upgradeClients {
		oc := testenv.Openconnect(t, tp.Client, testenv.OCOptions{Server: gwListen, ServerCertPin: cert.Pin,
			User: "alice", Password: "alice-pw", ExtraArgs: []string{"--reconnect-timeout", "120"}})
		a, err := netip.ParseAddr(oc.Env()["INTERNAL_IP4_ADDRESS"])
		if err != nil {
			t.Fatalf("no address: %v", oc.Env())
		}
		clients = append(clients, client{oc, a})
	}
	// sessions lists the site's sessions (the store's leases) as server at
	// sees them: address -> session id and server.
	sessions := func(at *upgradeServer) map[netip.Addr]admin.SiteSession {
		t.Helper()
		code, out, errs := runCLI("show", "sessions", "--site", "--json", "-admin-socket", at.sock())
		var ss []admin.SiteSession
		if code != exitOK || json.Unmarshal([]byte(out), &ss) != nil {
			t.Fatalf("show sessions --site: exit %d\n%s%s", code, out, errs)
		}
		m := map[netip.Addr]admin.SiteSession{}
		for _, s := range ss {
			m[s.Address] = s
		}
		return m
	}
	first := sessions(servers[0])
	for _, c := range clients {
		if _, ok := first[c.addr]; !ok {
			t.Fatalf("the store has no session for %v: %+v", c.addr, first)
		}
	}
	if len(first) != upgradeClients {
		t.Fatalf("%d sessions in the store, want %d: %+v", len(first), upgradeClients, first)
	}
	signIns := 0 // of the servers stopped so far, over their lifetime

	for i, s := range servers {
		other := servers[(i+1)%len(servers)] // up during s's upgrade
		// Its sessions are the ones the upgrade moves.
		var held []netip.Addr
		for a, ss := range sessions(other) {
			if ss.Server == s.name {
				held = append(held, a)
			}
		}
		if len(held) == 0 {
			t.Fatalf("%s holds no session before its upgrade: the step would prove nothing (%+v)", s.name, sessions(other))
		}
		t.Logf("upgrading %s, which holds %v", s.name, held)
		signIns += signInsOf(ctx, t, tp.GW, s)
		if code, out, errs := runCLI("server", "stop", "-admin-socket", s.sock()); code != exitOK {
			t.Fatalf("server stop %s: exit %d\n%s%s", s.name, code, out, errs)
		}
		if err := s.proc.Wait(30 * time.Second); err != nil { // drain_delay, then the sessions' hand-off
			t.Fatalf("%s did not exit cleanly after its drain: %v\n%s", s.name, err, s.proc.Tail(20))
		}
		// Every one of its clients is back on another server, same
		// address, same session.
		deadline := time.Now().Add(60 * time.Second) // openconnect retries at once, then every few seconds
		for {
			now := sessions(other)
			moved := 0
			for _, a := range held {
				if ss, ok := now[a]; ok && ss.Server != s.name && ss.Session == first[a].Session {
					moved++
				}
			}
			if moved == len(held) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s's drain, %d of %d sessions moved: %+v", s.name, moved, len(held), now)
			}
			time.Sleep(200 * time.Millisecond)
		}
		restarted := time.Now()
		start(s, next)
		back(s, restarted, siteCfg, nextVersion)
		// Mid-upgrade the view shows both versions, each where it runs.
		for j, o := range servers {
			want := oldVersion
			if j <= i {
				want = nextVersion
			}
			if v := serverVersion(status(other), o.name); v != want {
				t.Errorf("after %s's upgrade, status --site on %s shows %s at %q, want %q", s.name, other.name, o.name, v, want)
			}
		}
	}

	// Every client is still connected, with its first address, session
	// and no sign-in of its own since.
	last := sessions(servers[0])
	for _, c := range clients {
		select {
		case <-c.oc.Done():
			t.Fatalf("openconnect with %v exited:\n%s", c.addr, c.oc.Proc.Tail(20))
		default:
		}
		if got := last[c.addr]; got.Session != first[c.addr].Session {
			t.Errorf("%v: session %q at the end, %q at the start", c.addr, got.Session, first[c.addr].Session)
		}
		if body, err := testenv.CurlViaSocks(ctx, tp.Client, c.oc.SocksPort, web+"/"); err != nil || body != testenv.CorpPage {
			t.Errorf("%v: the web server after the upgrade: %q, %v", c.addr, body, err)
		}
	}
	if !maps.EqualFunc(first, last, func(a, b admin.SiteSession) bool { return a.Session == b.Session && a.User == b.User }) {
		t.Errorf("the site's sessions changed:\nbefore %+v\nafter  %+v", first, last)
	}
	for _, s := range servers {
		signIns += signInsOf(ctx, t, tp.GW, s)
	}
	if signIns != upgradeClients {
		t.Errorf("%d sign-ins over every server's lifetime, want %d (one per client, none during the upgrade)", signIns, upgradeClients)
	}
	// One site configuration on all three, and each server's view lists
	// the three up.
	for _, s := range servers {
		st := status(s)
		var names []string
		for _, r := range st.Servers {
			names = append(names, r.Server)
			if r.State != admin.StateUp || r.Config != siteCfg {
				t.Errorf("status --site on %s: %+v, want up running %s", s.name, r, siteCfg)
			}
		}
		if st.Store != "up" || !slices.Equal(names, []string{"gw-1", "gw-2", "gw-3"}) {
			t.Errorf("status --site on %s: store %q, servers %v", s.name, st.Store, names)
		}
	}
}

// serverVersion is name's version in st ("": not listed).
func serverVersion(st admin.SiteStatus, name string) string {
	for _, r := range st.Servers {
		if r.Server == name {
			return r.Version
		}
	}
	return ""
}

// signInsOf reads underpass_sign_ins_total from s's /metrics.
func signInsOf(ctx context.Context, t *testing.T, ns *testenv.Netns, s *upgradeServer) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.Dial(ctx, network, addr)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.admin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s /metrics: %v", s.name, err)
	}
	defer resp.Body.Close()
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s /metrics: %v", s.name, err)
	}
	n := 0.0
	for _, m := range fams["underpass_sign_ins_total"].GetMetric() {
		n += m.GetCounter().GetValue()
	}
	return int(n)
}
