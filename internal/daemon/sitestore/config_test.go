package sitestore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestConfigCAS: a push writes only over the revision it was based on;
// the loser of a race gets a *ConflictError and writes nothing.
func TestConfigCAS(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	if _, err := s.GetConfig(ctx(t)); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("empty store: %v, want ErrNoConfig", err)
	}
	first := SiteConfig{YAML: []byte("banner: one\n"), Hash: "h1", Schema: 1, Pushed: time.Now().UTC().Truncate(time.Second), By: "ops@a"}
	r1, err := s.PutConfig(ctx(t), first, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetConfig(ctx(t))
	if err != nil || string(got.YAML) != "banner: one\n" || got.Hash != "h1" || got.Revision != r1 || !got.Pushed.Equal(first.Pushed) || got.By != "ops@a" {
		t.Fatalf("GetConfig = %+v, %v (revision %d)", got, err, r1)
	}
	// Two pushes based on r1: the first wins, the second conflicts.
	r2, err := s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: two\n"), Hash: "h2"}, r1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: three\n"), Hash: "h3"}, r1)
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Based != r1 || ce.Current != r2 {
		t.Fatalf("stale push: %v, want a ConflictError %d -> %d", err, r1, r2)
	}
	// A "first push" (based on 0) over an existing configuration conflicts too.
	if _, err := s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: four\n"), Hash: "h4"}, 0); !errors.As(err, &ce) {
		t.Fatalf("push based on none: %v", err)
	}
	if got, err := s.GetConfig(ctx(t)); err != nil || got.Hash != "h2" {
		t.Fatalf("after the conflicts: %+v, %v, want h2", got, err)
	}
	if _, err := s.PutConfig(ctx(t), SiteConfig{Hash: "x"}, r2); err == nil {
		t.Fatal("an empty document was accepted")
	}
}

// TestWatchConfig: a watch from a revision delivers every later push, and
// one that starts from a compacted revision gets the newest configuration.
func TestWatchConfig(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	r1, err := s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: one\n"), Hash: "h1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var hashes []string
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.WatchConfig(wctx, r1, func(c SiteConfig) {
			mu.Lock()
			hashes = append(hashes, c.Hash)
			mu.Unlock()
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("WatchConfig returned %v", err)
		}
	}()
	r2, err := s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: two\n"), Hash: "h2"}, r1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: three\n"), Hash: "h3"}, r2); err != nil {
		t.Fatal(err)
	}
	waitHashes := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(waitFor)
		for {
			mu.Lock()
			got := append([]string(nil), hashes...)
			mu.Unlock()
			if len(got) == len(want) {
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("watched %v, want %v", got, want)
					}
				}
				return
			}
			if len(got) > len(want) || time.Now().After(deadline) {
				t.Fatalf("watched %v, want %v", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitHashes("h2", "h3")

	// From a compacted revision: the newest configuration, once.
	cur, err := s.GetConfig(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Compact(ctx(t), cur.Revision); err != nil {
		t.Fatal(err)
	}
	var got []string
	if rev := s.watchConfigFrom(ctx(t), r1, func(c SiteConfig) { got = append(got, c.Hash) }); rev != cur.Revision || len(got) != 1 || got[0] != "h3" {
		t.Fatalf("watch from compacted revision %d: returned %d, delivered %v; want %d, [h3]", r1, rev, got, cur.Revision)
	}
}
