package tunnel_test

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestDialFailuresLikeTheKernel connects from the stock openconnect's
// client (kernel tun) to corporate addresses that fail, and expects
// connect() to fail with the same errno as the same connect() on the
// gateway host itself, the kernel's answer: a host that does not answer
// ARP gives EHOSTUNREACH (a router returns ICMP host unreachable; before,
// the client got ECONNREFUSED), a closed port ECONNREFUSED.
func TestDialFailuresLikeTheKernel(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "iptables")
	tp := testenv.Topology(t)
	cert := testenv.NewCert(t, testenv.GWAddr.String())
	var logs testenv.LogBuffer
	_, listen := sessionGateway(t, tp, cert, 443, &logs, nil)
	testenv.Openconnect(t, tp.Client, testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin,
		User: "alice", Password: "secret", Mode: testenv.ModeTun})

	cases := []struct {
		name, addr string
		want       syscall.Errno
	}{
		// 198.19.0.77 is on corp's subnet with no host: ARP fails (~3 s).
		{"host does not answer", "198.19.0.77:80", syscall.EHOSTUNREACH},
		{"closed port", "198.19.0.2:9", syscall.ECONNREFUSED},
	}
	var wg sync.WaitGroup
	for _, tc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dial := func(ns *testenv.Netns) string {
				c, err := ns.Dial(ctx, "tcp", tc.addr)
				if err == nil {
					c.Close()
				}
				return errClass(err)
			}
			ref, got := dial(tp.GW), dial(tp.Client)
			if ref != tc.want.Error() {
				t.Errorf("%s: the gateway host's own connect: %v, want %v (topology changed?)", tc.name, ref, tc.want)
			}
			if got != ref {
				t.Errorf("%s: through the tunnel %v, the kernel %v", tc.name, got, ref)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.Logf("gateway log:\n%s", logs.String())
	}
}
