package tunnel

import (
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// BenchmarkSiteSignIn: AnyConnect sign-ins (XML exchange, then CSTP
// CONNECT on the same TLS connection; the session stays, detached) on one
// gateway with a sealed cookie, without a site store and with one (real
// etcd on loopback: each sign-in confirms its address with a
// compare-and-swap lease), one client at a time and from parallel clients.
// Sessions are not ended (an end publishes a revocation): run with a
// bounded -benchtime (e.g. 2000x) so the /16 pool is not exhausted.
func BenchmarkSiteSignIn(b *testing.B) {
	e := testenv.StartEtcd(b)
	key := make([]byte, auth.SealerKeySize)
	_, _ = rand.Read(key)
	for _, store := range []bool{false, true} {
		for _, parallel := range []bool{false, true} {
			name := "store=off"
			if store {
				name = "store=on"
			}
			if parallel {
				name += "/parallel"
			} else {
				name += "/serial"
			}
			b.Run(name, func(b *testing.B) {
				sealer, err := auth.NewSealer(nil, key)
				if err != nil {
					b.Fatal(err)
				}
				var site Site
				if store {
					st, err := sitestore.New(sitestore.Config{Endpoints: []string{e.Endpoint}, Prefix: "/bench/" + b.Name()})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { st.Close() })
					site = Site{ServerName: "bench", Store: st}
				}
				g, addr := startGateway(b, func(c *Config) { c.Sealer, c.Site = sealer, site })
				if store {
					deadline := time.Now().Add(10 * time.Second)
					for !g.Stats().SiteStore.Up {
						if time.Now().After(deadline) {
							b.Fatal("the store never came up")
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				lc := lightClient{timeout: 10 * time.Second}
				var failed atomic.Int64
				signIn := func() {
					if _, _, err := lc.signInConnect(addr, "alice", "secret"); err != nil {
						failed.Add(1)
					}
				}
				b.ResetTimer()
				if parallel {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							signIn()
						}
					})
				} else {
					for range b.N {
						signIn()
					}
				}
				b.StopTimer()
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d sign-ins failed", n)
				}
				if store && g.Stats().SiteStore.LeasesQueued > 0 {
					b.Fatalf("leases queued: the store was down during the run (%+v)", g.Stats().SiteStore)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sign-ins/s")
			})
		}
	}
}
