package sitestore

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// BenchmarkLeaseFootprint claims 10,000 address leases (sessions with a
// user name and client address, one server, 16 claims at a time, real
// etcd on loopback) and reports the store's footprint: etcd's database
// size and the size of one listing (what a server's learn and `show
// sessions --site` read) per lease, and the claim rate.
func BenchmarkLeaseFootprint(b *testing.B) {
	const n, parallel = 10000, 16
	for range b.N {
		b.StopTimer()
		e := testenv.StartEtcd(b)
		s, err := New(Config{Endpoints: []string{e.Endpoint}, Prefix: "/underpass/hq/"})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		st0, err := s.cli.Status(ctx, e.Endpoint)
		if err != nil {
			b.Fatal(err)
		}
		base := netip.MustParseAddr("169.254.0.2")
		until := time.Now().Add(8 * time.Hour)
		start := time.Now()
		b.StartTimer()
		var wg sync.WaitGroup
		errs := make(chan error, parallel)
		for w := range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := base
				for range w {
					a = a.Next()
				}
				for i := w; i < n; i += parallel {
					l := site.Lease{Addr: a, Session: fmt.Sprintf("%032x", i), Server: "gw-a", User: fmt.Sprintf("user%05d@corp.example", i),
						Client: netip.MustParseAddr("198.51.100.7"), Since: start, Until: until}
					if err := s.ClaimLease(ctx, l); err != nil {
						errs <- err
						return
					}
					for range parallel {
						a = a.Next()
					}
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		took := time.Since(start)
		st1, err := s.cli.Status(ctx, e.Endpoint)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := s.cli.Get(ctx, s.prefix+"leases/", clientv3.WithPrefix())
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.Kvs) != n {
			b.Fatalf("%d leases stored, want %d", len(resp.Kvs), n)
		}
		listed := 0
		for _, kv := range resp.Kvs {
			listed += len(kv.Key) + len(kv.Value)
		}
		b.ReportMetric(float64(st1.DbSize-st0.DbSize)/n, "db-bytes/lease")
		b.ReportMetric(float64(listed)/n, "listed-bytes/lease")
		b.ReportMetric(n/took.Seconds(), "claims/s")
		cancel()
		s.Close()
	}
}
