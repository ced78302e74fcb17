package testenv

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Unbound runs unbound in ns as a corporate DNS server on port 53 of each
// of addrs: authoritative for zone with the given records (unbound
// local-data syntax, "name TTL IN TYPE value"), refusing every other name,
// never contacting the internet. It returns once the server answers the
// first record, and stops at cleanup.
func Unbound(t testing.TB, ns *Netns, addrs []netip.Addr, zone string, records []string) *Proc {
	t.Helper()
	RequireTool(t, "unbound", "dig")
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("server:\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "\tinterface: %s\n", a)
	}
	fmt.Fprintf(&b, `	port: 53
	do-daemonize: no
	chroot: ""
	username: ""
	directory: %q
	pidfile: %q
	use-syslog: no
	logfile: ""
	do-ip6: yes
	num-threads: 1
	module-config: "iterator"
	access-control: 0.0.0.0/0 allow
	access-control: ::/0 allow
	local-zone: "." refuse
	local-zone: %q static
`, dir, filepath.Join(dir, "unbound.pid"), zone)
	for _, r := range records {
		fmt.Fprintf(&b, "\tlocal-data: %q\n", r)
	}
	b.WriteString("remote-control:\n\tcontrol-enable: no\n")
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := ns.Start(t, "unbound", "-d", "-c", conf)
	f := strings.Fields(records[0])                                          // name TTL IN TYPE value
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // unbound starts in well under a second
	defer cancel()
	for {
		out, err := ns.Exec(ctx, "dig", "+short", "+time=1", "+tries=1", "@"+addrs[0].String(), f[3], f[0]).Output()
		if err == nil && strings.TrimSpace(string(out)) == f[4] {
			return p
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: unbound did not answer: %v\n%s", err, p.Tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
