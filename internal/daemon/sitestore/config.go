package sitestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The site configuration: one YAML document under <prefix>config, written
// by `underpass site push` with a compare-and-swap on the key's mod
// revision, and watched by every server of the site.

// SiteConfig is the site configuration as the store keeps it.
type SiteConfig struct {
	YAML   []byte    // the document, as pushed
	Hash   string    // its hash (config.Hash), as servers announce it
	Schema int       // the config schema it needs (config.RequiredSchema)
	Pushed time.Time // when it was pushed
	By     string    // who pushed it (user@host)
	// Revision is the key's mod revision in etcd (0 when there is no
	// site configuration): what a push compares to write.
	Revision int64
}

// siteConfig is a SiteConfig's JSON form in etcd.
type siteConfig struct {
	YAML   string    `json:"yaml"`
	Hash   string    `json:"hash"`
	Schema int       `json:"schema"`
	Pushed time.Time `json:"pushed"`
	By     string    `json:"by,omitempty"`
}

// ErrNoConfig: the store holds no site configuration yet.
var ErrNoConfig = errors.New("sitestore: the store holds no site configuration (underpass site push)")

// ConflictError is a push that lost a race: the site configuration is no
// longer at the revision the push was based on.
type ConflictError struct {
	Based   int64 // the revision the push expected (0: none)
	Current int64 // the revision in the store now (0: none)
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("sitestore: the site configuration changed while pushing (expected revision %d, the store has %d): pull it, merge, and push again", e.Based, e.Current)
}

func (s *Store) configKey() string { return s.prefix + "config" }

// GetConfig returns the site configuration, or ErrNoConfig.
func (s *Store) GetConfig(ctx context.Context) (SiteConfig, error) {
	resp, err := s.cli.Get(ctx, s.configKey())
	if err != nil {
		return SiteConfig{}, err
	}
	if len(resp.Kvs) == 0 {
		return SiteConfig{}, ErrNoConfig
	}
	return decodeConfig(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

func decodeConfig(v []byte, rev int64) (SiteConfig, error) {
	var sc siteConfig
	if err := json.Unmarshal(v, &sc); err != nil {
		return SiteConfig{}, fmt.Errorf("sitestore: unreadable site configuration at revision %d: %w", rev, err)
	}
	return SiteConfig{YAML: []byte(sc.YAML), Hash: sc.Hash, Schema: sc.Schema, Pushed: sc.Pushed, By: sc.By, Revision: rev}, nil
}

// PutConfig writes c if the site configuration is still at revision based
// (0: there is none yet), in one etcd transaction; else it writes nothing
// and returns a *ConflictError. It returns the new revision.
func (s *Store) PutConfig(ctx context.Context, c SiteConfig, based int64) (int64, error) {
	if len(c.YAML) == 0 || c.Hash == "" {
		return 0, errors.New("sitestore: a site configuration needs its document and hash")
	}
	v, err := json.Marshal(siteConfig{YAML: string(c.YAML), Hash: c.Hash, Schema: c.Schema, Pushed: c.Pushed, By: c.By})
	if err != nil {
		return 0, err
	}
	k := s.configKey()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", based)).
		Then(clientv3.OpPut(k, string(v))).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		cur := int64(0)
		if g := resp.Responses[0].GetResponseRange(); g != nil && len(g.Kvs) > 0 {
			cur = g.Kvs[0].ModRevision
		}
		return 0, &ConflictError{Based: based, Current: cur}
	}
	return resp.Header.Revision, nil
}

// WatchConfig calls fn, from one goroutine, with every site configuration
// written after revision after, until ctx ends; then it returns ctx.Err().
// Like Watch it survives outages by itself; when etcd has compacted the
// history it needs, it reads the current configuration instead (fn sees
// only the newest then, which is all a server applies anyway).
func (s *Store) WatchConfig(ctx context.Context, after int64, fn func(SiteConfig)) error {
	for {
		after = s.watchConfigFrom(ctx, after, fn)
		if !sleep(ctx, watchRetry) {
			return ctx.Err()
		}
	}
}

// watchConfigFrom delivers the configurations written after rev until the
// watch ends, and returns the last revision delivered.
func (s *Store) watchConfigFrom(ctx context.Context, rev int64, fn func(SiteConfig)) int64 {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range s.cli.Watch(wctx, s.configKey(), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			s.log.Info("site store: history compacted; reading the site configuration again", "revision", rev)
			c, err := s.GetConfig(ctx)
			switch {
			case err == nil && c.Revision > rev:
				fn(c)
				return c.Revision
			case err == nil || errors.Is(err, ErrNoConfig):
				// Nothing newer: the watch resumes after the compaction.
				return max(rev, wr.CompactRevision-1)
			}
			s.log.Debug("site store: reading the site configuration failed", "err", err)
			return rev
		}
		if err := wr.Err(); err != nil {
			s.log.Debug("site store: config watch ended", "err", err)
			return rev
		}
		for _, ev := range wr.Events {
			rev = ev.Kv.ModRevision
			if ev.Type == clientv3.EventTypeDelete {
				s.log.Warn("site store: the site configuration was deleted; servers keep running the last one")
				continue
			}
			c, err := decodeConfig(ev.Kv.Value, ev.Kv.ModRevision)
			if err != nil {
				s.log.Warn("site store: skipping an unreadable site configuration", "err", err)
				continue
			}
			fn(c)
		}
	}
	return rev
}
