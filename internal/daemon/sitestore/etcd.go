// Package sitestore is the underpass binary's site store (tunnel/site) on
// etcd. The client is go.etcd.io/etcd/client/v3 v3.5.x, which speaks to
// etcd 3.4 servers (Debian's etcd-server) as well as 3.5.
//
// Keys, under Config.Prefix (values are JSON):
//
//	revoked/<session id>   a revocation, under a lease that ends with the cookie
//	bans/<address>         a ban, under a lease that ends with the ban; deleting it lifts the ban
//	servers/<server name>  a health record, under a lease with a 10 s TTL kept alive by Announce
//	leases/<address>       a site-wide address lease and session record (site.Leases), under an
//	                       etcd lease that ends within a minute after the session's cookie (one per
//	                       server and minute, leaseBucket); written by compare-and-swap
//	config                 the site configuration (`underpass site push`; see config.go)
//
// The store holds session ids, client addresses, server names, in
// leases/, user names, and in config the site configuration (static users'
// password hashes, IdP secrets). The session key never enters it.
package sitestore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/underpass/underpass/tunnel/site"
)

// HealthTTL is the health record's lease TTL in seconds. A gateway
// announces every 3 s, so a live server misses three announcements before
// its record expires, and a dead one is gone within 10 s (plus etcd's
// lease check, well under a second): inside the 15 s the site's status
// page promises.
const HealthTTL = 10

// watchRetry is the pause before a broken watch is re-established.
const watchRetry = time.Second

// Config configures the etcd site store.
type Config struct {
	// Endpoints are the etcd client URLs (http://host:2379 or https://…).
	Endpoints []string
	// Prefix is the key prefix of this site, e.g. "/underpass/site-a/".
	// Default "/underpass/". A "/" is appended when missing.
	Prefix string
	// CAFile verifies the etcd servers; CertFile and KeyFile are this
	// server's client certificate. Any set means TLS.
	CAFile, CertFile, KeyFile string
	// Logger receives the store's logs. Default: silent.
	Logger *slog.Logger
}

// Store is the etcd site store. Close it when done.
type Store struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	mu    sync.Mutex
	lease clientv3.LeaseID // the health record's lease; 0: none yet

	bmu     sync.Mutex
	buckets map[time.Time]clientv3.LeaseID // address leases' shared etcd leases by end (leaseBucket)
	span    time.Duration                  // a bucket's span; 0: leaseBucket (tests shorten it)
}

var _ site.Store = (*Store)(nil)

// New connects to etcd. It does not wait for etcd to answer: the store is
// created while etcd is down too, and the gateway reports it unavailable
// until it answers.
func New(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("sitestore: no etcd endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/underpass/"
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints,
		TLS:       tc,
		Logger:    zap.NewNop(),
		// No DialTimeout: New must not block on an unreachable etcd.
		DialKeepAliveTime:    5 * time.Second, // notice a dead etcd within seconds
		DialKeepAliveTimeout: 2 * time.Second,
		// Reconnect within 2 s of etcd's return (gRPC's default backoff
		// grows to 120 s, leaving a server degraded long after an outage).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("sitestore: %w", err)
	}
	return &Store{cli: cli, prefix: cfg.Prefix, log: cfg.Logger}, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("sitestore: CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("sitestore: CA file %s: no PEM certificate", cfg.CAFile)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("sitestore: a client certificate needs both its certificate and key files")
	}
	if cfg.CertFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("sitestore: client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// Close closes the etcd client.
func (s *Store) Close() error { return s.cli.Close() }

// record is a Record's JSON form in etcd.
type record struct {
	Kind    string    `json:"kind"`
	Session string    `json:"session,omitempty"`
	Addr    string    `json:"addr,omitempty"`
	Until   time.Time `json:"until"`
	Server  string    `json:"server"`
}

func (s *Store) key(r site.Record) (string, error) {
	switch r.Kind {
	case site.Revoked:
		if r.Session == "" {
			return "", errors.New("sitestore: revocation without a session id")
		}
		return s.prefix + "revoked/" + r.Session, nil
	case site.Banned, site.Lifted:
		if !r.Addr.IsValid() {
			return "", fmt.Errorf("sitestore: %s record without an address", r.Kind)
		}
		return s.prefix + "bans/" + r.Addr.Unmap().String(), nil
	}
	return "", fmt.Errorf("sitestore: unknown record kind %d", r.Kind)
}

// Publish implements site.Store. A Revoked or Banned record lives under
// a lease that ends at Until (at least 1 s: etcd's smallest TTL).
func (s *Store) Publish(ctx context.Context, r site.Record) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	if r.Kind == site.Lifted {
		_, err := s.cli.Delete(ctx, k)
		return err
	}
	ttl := int64(time.Until(r.Until).Round(time.Second) / time.Second)
	if ttl <= 0 {
		return nil // over already
	}
	v, err := json.Marshal(record{Kind: r.Kind.String(), Session: r.Session, Addr: addrString(r.Addr), Until: r.Until, Server: r.Server})
	if err != nil {
		return err
	}
	l, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return err
	}
	_, err = s.cli.Put(ctx, k, string(v), clientv3.WithLease(l.ID))
	return err
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// decode turns a revoked/ or bans/ key-value into a Record; ok is false
// for other keys and for values it cannot read (logged).
func (s *Store) decode(kv *mvccpb.KeyValue, deleted bool) (site.Record, bool) {
	k := strings.TrimPrefix(string(kv.Key), s.prefix)
	switch {
	case strings.HasPrefix(k, "bans/") && deleted:
		a, err := netip.ParseAddr(strings.TrimPrefix(k, "bans/"))
		if err != nil {
			s.log.Warn("site store: unreadable ban key", "key", string(kv.Key), "err", err)
			return site.Record{}, false
		}
		return site.Record{Kind: site.Lifted, Addr: a}, true
	case deleted:
		return site.Record{}, false
	case strings.HasPrefix(k, "revoked/"), strings.HasPrefix(k, "bans/"):
	default:
		return site.Record{}, false
	}
	var v record
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		s.log.Warn("site store: unreadable record", "key", string(kv.Key), "err", err)
		return site.Record{}, false
	}
	r := site.Record{Session: v.Session, Until: v.Until, Server: v.Server}
	switch {
	case v.Kind == site.Revoked.String() && strings.HasPrefix(k, "revoked/") && v.Session != "":
		r.Kind = site.Revoked
	case v.Kind == site.Banned.String() && strings.HasPrefix(k, "bans/"):
		a, err := netip.ParseAddr(v.Addr)
		if err != nil {
			s.log.Warn("site store: unreadable ban", "key", string(kv.Key), "err", err)
			return site.Record{}, false
		}
		r.Kind, r.Addr = site.Banned, a
	default:
		s.log.Warn("site store: record does not match its key", "key", string(kv.Key), "kind", v.Kind)
		return site.Record{}, false
	}
	return r, true
}

// watched are the key ranges Watch lists and watches, under Config.Prefix.
// Only these: sessions (leases/), health records (servers/) and the site
// configuration share the prefix, and a watch on the whole prefix would
// send every server every other server's sign-in, session end and
// announcement, O(servers × sessions) events a server then throws away.
var watched = []string{"bans/", "revoked/"}

// Watch implements site.Store: it lists the revoked/ and bans/ records,
// then watches each range from the revision after its list. etcd's client
// resumes a watch across reconnects by itself; when etcd has compacted the
// revision a range's watch needs, Watch lists that range again.
func (s *Store) Watch(ctx context.Context, fn func(site.Record)) error {
	// One goroutine per range feeds recs; fn runs on this goroutine only.
	recs := make(chan site.Record)
	var wg sync.WaitGroup
	for _, sub := range watched {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watchRange(ctx, s.prefix+sub, func(r site.Record) {
				select {
				case recs <- r:
				case <-ctx.Done():
				}
			})
		}()
	}
	defer wg.Wait()
	for {
		select {
		case r := <-recs:
			fn(r)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// watchRange lists the records under the key prefix pfx, then watches it
// from the revision after the list, until ctx ends.
func (s *Store) watchRange(ctx context.Context, pfx string, fn func(site.Record)) {
	var rev int64 // the last revision delivered; 0: list first
	for {
		if rev == 0 {
			resp, err := s.cli.Get(ctx, pfx, clientv3.WithPrefix())
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Debug("site store: list failed", "prefix", pfx, "err", err)
				if !sleep(ctx, watchRetry) {
					return
				}
				continue
			}
			for _, kv := range resp.Kvs {
				if r, ok := s.decode(kv, false); ok {
					fn(r)
				}
			}
			rev = resp.Header.Revision
		}
		rev = s.watchFrom(ctx, pfx, rev, fn)
		if !sleep(ctx, watchRetry) {
			return
		}
	}
}

// watchFrom delivers the events under the key prefix pfx after rev until
// the watch ends, and returns the last revision delivered (0 when the
// history was compacted).
func (s *Store) watchFrom(ctx context.Context, pfx string, rev int64, fn func(site.Record)) int64 {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range s.cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			s.log.Info("site store: history compacted; listing again", "prefix", pfx, "revision", rev, "compacted", wr.CompactRevision)
			return 0
		}
		if err := wr.Err(); err != nil {
			s.log.Debug("site store: watch ended", "prefix", pfx, "err", err)
			return rev
		}
		for _, ev := range wr.Events {
			if r, ok := s.decode(ev.Kv, ev.Type == clientv3.EventTypeDelete); ok {
				fn(r)
			}
			rev = ev.Kv.ModRevision
		}
	}
	return rev
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// health is a Health's JSON form in etcd.
type health struct {
	Server   string    `json:"server"`
	Sessions int       `json:"sessions"`
	Draining bool      `json:"draining"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`

	Version      string   `json:"version,omitempty"`
	ConfigSchema int      `json:"config_schema,omitempty"`
	Config       string   `json:"config,omitempty"`
	Refused      string   `json:"refused,omitempty"`
	ConfigError  string   `json:"config_error,omitempty"`
	Restart      []string `json:"restart,omitempty"`
}

// Announce implements site.Store: it writes the record under this
// server's lease (granted on first use, and again when etcd has expired
// it during an outage) and renews the lease.
func (s *Store) Announce(ctx context.Context, h site.Health) error {
	if h.Server == "" {
		return errors.New("sitestore: health record without a server name")
	}
	v, err := json.Marshal(health(h))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if s.lease == 0 {
			l, err := s.cli.Grant(ctx, HealthTTL)
			if err != nil {
				return err
			}
			s.lease = l.ID
		}
		_, err := s.cli.Put(ctx, s.prefix+"servers/"+h.Server, string(v), clientv3.WithLease(s.lease))
		if err == nil {
			_, err = s.cli.KeepAliveOnce(ctx, s.lease)
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			s.lease = 0 // expired during an outage: grant a new one
			continue
		}
		return err
	}
}

// Withdraw implements site.Store: it revokes the health record's lease.
func (s *Store) Withdraw(ctx context.Context, server string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease != 0 {
		_, err := s.cli.Revoke(ctx, s.lease)
		s.lease = 0
		return err
	}
	_, err := s.cli.Delete(ctx, s.prefix+"servers/"+server)
	return err
}

// Servers implements site.Store.
func (s *Store) Servers(ctx context.Context) ([]site.Health, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"servers/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := make([]site.Health, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var h health
		if err := json.Unmarshal(kv.Value, &h); err != nil {
			s.log.Warn("site store: unreadable health record", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, site.Health(h))
	}
	slices.SortFunc(out, func(a, b site.Health) int { return strings.Compare(a.Server, b.Server) })
	return out, nil
}
