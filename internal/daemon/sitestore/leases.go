package sitestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/underpass/underpass/tunnel/site"
)

var _ site.Leases = (*Store)(nil)

// claimTries bounds ClaimLease's compare-and-swap rounds: a round fails
// only when another server wrote the same key between our read and our
// write, which for one address (one session) is rare; three lost rounds
// in a row mean a fight the caller should see as an error.
const claimTries = 3

// claimFresh tells a sign-in's claim from a resume's by the session's
// sign-in time (Lease.Since): a gateway claims a new session's address
// within its 2 s store budget of the sign-in, and a resume comes later.
// 5 s leaves room for a slow gateway and clock skew between servers; a
// claim on the wrong side of it costs one etcd round trip more, never
// correctness.
const claimFresh = 5 * time.Second

// leaseBucket groups address leases by expiry: every leases/ key whose
// Until falls in one minute shares one etcd lease (granted once, per
// store client), which ends at the minute's end. One etcd write per
// claim instead of two (a Grant is a write too), and one etcd lease per
// minute of sign-ins instead of one per session; a key outlives its
// cookie by under a minute, and a session's end deletes it anyway.
const leaseBucket = time.Minute

// bucket returns the shared etcd lease for keys ending at until.
func (s *Store) bucket(ctx context.Context, until time.Time) (clientv3.LeaseID, error) {
	span := s.span
	if span == 0 {
		span = leaseBucket
	}
	end := until.Truncate(span).Add(span)
	s.bmu.Lock()
	id, ok := s.buckets[end]
	s.bmu.Unlock()
	if ok {
		return id, nil
	}
	g, err := s.cli.Grant(ctx, ttlUntil(end))
	if err != nil {
		return 0, err
	}
	now := time.Now()
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if s.buckets == nil {
		s.buckets = make(map[time.Time]clientv3.LeaseID)
	}
	if id, ok := s.buckets[end]; ok { // granted by a concurrent claim: ours stays unused and expires
		return id, nil
	}
	for e := range s.buckets {
		if e.Before(now) {
			delete(s.buckets, e)
		}
	}
	s.buckets[end] = g.ID
	return g.ID, nil
}

// forgetBucket drops a bucket's etcd lease that etcd no longer knows.
func (s *Store) forgetBucket(id clientv3.LeaseID) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for e, b := range s.buckets {
		if b == id {
			delete(s.buckets, e)
		}
	}
}

// lease is a Lease's JSON form in etcd (the address is the key).
type lease struct {
	Session string    `json:"session"`
	Server  string    `json:"server"`
	User    string    `json:"user,omitempty"`
	Client  string    `json:"client,omitempty"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
}

func (s *Store) leaseKey(a netip.Addr) string { return s.prefix + "leases/" + a.Unmap().String() }

// decodeLease reads a leases/ key-value.
func (s *Store) decodeLease(kv *mvccpb.KeyValue) (site.Lease, error) {
	a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), s.prefix+"leases/"))
	if err != nil {
		return site.Lease{}, fmt.Errorf("lease key %q: %w", kv.Key, err)
	}
	var v lease
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return site.Lease{}, fmt.Errorf("lease %s: %w", a, err)
	}
	if v.Session == "" {
		return site.Lease{}, fmt.Errorf("lease %s: no session", a)
	}
	l := site.Lease{Addr: a, Session: v.Session, Server: v.Server, User: v.User, Since: v.Since, Until: v.Until}
	if v.Client != "" {
		l.Client, _ = netip.ParseAddr(v.Client) // an unreadable client address is only missing from views
	}
	return l, nil
}

// ClaimLease implements site.Leases. The key leases/<addr> lives under an
// etcd lease that ends within a minute after l.Until (leaseBucket), so a
// session that never comes back frees its address when its cookie
// expires. The write is one transaction: put if the key does not exist
// (its create revision is 0), or if it is unchanged since it was read and
// names l.Session; else the holder is read back in the same transaction.
func (s *Store) ClaimLease(ctx context.Context, l site.Lease) error {
	if !l.Addr.IsValid() || l.Session == "" {
		return errors.New("sitestore: a lease needs an address and a session")
	}
	ttl := ttlUntil(l.Until)
	if ttl <= 0 {
		return fmt.Errorf("sitestore: lease of %s ends in the past (%s)", l.Addr, l.Until.Format(time.RFC3339))
	}
	v, err := json.Marshal(lease{Session: l.Session, Server: l.Server, User: l.User, Client: addrString(l.Client), Since: l.Since, Until: l.Until})
	if err != nil {
		return err
	}
	id, err := s.bucket(ctx, l.Until)
	if err != nil {
		return err
	}
	k := s.leaseKey(l.Addr)
	cmp := clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	// A resume claims a key its session's old server wrote. Read it first
	// (serializable: the member answers from its own store, no raft) and,
	// when it names l.Session, compare on its revision, so the claim is
	// one write. Without the read "create if absent" fails first, and etcd
	// runs even that failed transaction through raft (a branch has a put):
	// two proposals, two fsyncs per resume, and a reconnect storm's etcd
	// work doubled (BENCHMARKS.md section 7). A sign-in's key is almost
	// always absent, and the read would only add a round trip to it, so a
	// claim for a session that signed in within claimFresh skips it. The
	// read may be stale: the compare then fails and the loop goes on from
	// what the transaction read back.
	if time.Since(l.Since) > claimFresh {
		g, err := s.cli.Get(ctx, k, clientv3.WithSerializable())
		if err != nil {
			return err
		}
		if len(g.Kvs) > 0 {
			if cur, err := s.decodeLease(g.Kvs[0]); err == nil && cur.Session == l.Session {
				cmp = clientv3.Compare(clientv3.ModRevision(k), "=", g.Kvs[0].ModRevision)
			}
		}
	}
	regranted := false
	for range claimTries {
		tr, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, string(v), clientv3.WithLease(id))).Else(clientv3.OpGet(k)).Commit()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && !regranted {
			// The bucket's etcd lease is gone (revoked by hand, or etcd
			// restored from a backup): grant another.
			regranted = true
			s.forgetBucket(id)
			if id, err = s.bucket(ctx, l.Until); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
		kvs := tr.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 { // released meanwhile
			cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
			continue
		}
		cur, err := s.decodeLease(kvs[0])
		if err != nil {
			s.log.Warn("site store: unreadable lease overwritten", "key", k, "err", err)
		} else if cur.Session != l.Session {
			return &site.HeldError{Holder: cur}
		}
		cmp = clientv3.Compare(clientv3.ModRevision(k), "=", kvs[0].ModRevision)
	}
	return fmt.Errorf("sitestore: lease of %s: %d compare-and-swap rounds lost", l.Addr, claimTries)
}

// ReleaseLease implements site.Leases: it reads the lease and, if it is
// session's on server, deletes it unless it changed since (a resume
// elsewhere in between keeps it).
func (s *Store) ReleaseLease(ctx context.Context, addr netip.Addr, session, server string) error {
	if !addr.IsValid() {
		return errors.New("sitestore: release of an invalid address")
	}
	k := s.leaseKey(addr)
	resp, err := s.cli.Get(ctx, k)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	cur, err := s.decodeLease(kv)
	if err == nil && (cur.Session != session || cur.Server != server) {
		return nil
	}
	_, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision)).Then(clientv3.OpDelete(k)).Commit()
	return err
}

// Leases implements site.Leases.
func (s *Store) Leases(ctx context.Context) ([]site.Lease, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"leases/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := make([]site.Lease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		l, err := s.decodeLease(kv)
		if err != nil {
			s.log.Warn("site store: unreadable lease", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b site.Lease) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// ttlUntil is an etcd lease TTL in whole seconds ending at t (rounded up:
// a lease never ends before t).
func ttlUntil(t time.Time) int64 {
	d := time.Until(t)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
