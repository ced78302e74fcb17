package certstore

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newPair(t *testing.T, cn string) ([]byte, []byte) {
	t.Helper()
	c, k, err := certutil.SelfSigned([]string{cn}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func served(t *testing.T, s *Store) string {
	t.Helper()
	c, _ := s.GetCertificate(&tls.ClientHelloInfo{})
	l, err := certutil.Leaf(c)
	if err != nil {
		t.Fatal(err)
	}
	return l.Subject.CommonName
}

func TestRotationAndDelayedImport(t *testing.T) {
	dir := t.TempDir()
	src := certutil.Source{CertFile: filepath.Join(dir, "site.crt"), KeyFile: filepath.Join(dir, "site.key")}
	write := func(c, k []byte) {
		if err := os.WriteFile(src.CertFile, c, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src.KeyFile, k, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, ak := newPair(t, "a.example")
	write(a, ak)
	clk := &clock{t: time.Now()}
	var got []string // the typed events, "kind subject"
	cfg := Config{Source: src, StateDir: filepath.Join(dir, "state"), now: clk.now,
		Events: func(e Event) { got = append(got, e.Kind.String()+" "+e.Subject) }}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if served(t, s) != "a.example" {
		t.Fatal("not serving a")
	}
	if st := s.Status(); len(st.Warnings) == 0 || !strings.Contains(st.Warnings[0], "self-signed") {
		t.Errorf("warnings %v", st.Warnings)
	}

	// Rotation: the files change, the next poll serves the new certificate.
	b, bk := newPair(t, "b.example")
	time.Sleep(10 * time.Millisecond) // a distinct mtime
	write(b, bk)
	s.Tick()
	if served(t, s) != "b.example" {
		t.Fatal("rotation: not serving b")
	}
	// A broken rewrite is refused; b stays.
	time.Sleep(10 * time.Millisecond)
	write(a, bk) // key does not match
	s.Tick()
	if served(t, s) != "b.example" {
		t.Fatal("a broken file replaced the serving certificate")
	}
	write(b, bk)
	s.Tick()

	// Delayed import: staged, not served before its time.
	c, ck := newPair(t, "c.example")
	st, err := s.Import(ImportRequest{CertPEM: c, KeyPEM: ck, Delay: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if st.Subject != "c.example" || s.Status().Staged == nil {
		t.Fatalf("staged %+v", s.Status())
	}
	s.Tick()
	if served(t, s) != "b.example" {
		t.Fatal("staged certificate served early")
	}
	// A restart before the time keeps the plan.
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Status().Staged == nil || served(t, s2) != "b.example" {
		t.Fatalf("after restart: %+v", s2.Status())
	}
	clk.add(11 * time.Minute)
	s2.Tick()
	if served(t, s2) != "c.example" || s2.Status().Staged != nil {
		t.Fatalf("not activated: %+v", s2.Status())
	}
	// The configured files now hold c, so a later start serves it.
	s3, err := New(cfg)
	if err != nil || served(t, s3) != "c.example" {
		t.Fatalf("after activation restart: %v", err)
	}
	// Immediate import; bad imports are refused with reasons.
	d, dk := newPair(t, "d.example")
	if _, err := s3.Import(ImportRequest{CertPEM: d, KeyPEM: dk}); err != nil || served(t, s3) != "d.example" {
		t.Fatalf("immediate import: %v", err)
	}
	for _, bad := range []ImportRequest{
		{CertPEM: d, KeyPEM: ck},
		{CertPEM: []byte("x"), KeyPEM: dk},
		{PFX: []byte("x")},
		{CertPEM: d, KeyPEM: dk, Delay: -time.Minute},
	} {
		if _, err := s3.Import(bad); err == nil {
			t.Errorf("import accepted: %+v", bad)
		}
	}
	// Every change reached Config.Events, in order (s, then s2 and s3,
	// which share cfg): loads, the rewrite back to b, stagings, activations.
	want := []string{"certificate loaded a.example", "certificate loaded b.example", "certificate loaded b.example",
		"certificate staged c.example", "certificate loaded b.example", "staged certificate activated c.example",
		"certificate loaded c.example", "certificate loaded c.example", "certificate staged d.example",
		"staged certificate activated d.example", "certificate loaded d.example"}
	if !slices.Equal(got, want) {
		t.Errorf("events\n got %q\nwant %q", got, want)
	}
}

func TestNewRefusesBadCertificate(t *testing.T) {
	dir := t.TempDir()
	a, _ := newPair(t, "a.example")
	_, bk := newPair(t, "b.example")
	src := certutil.Source{CertFile: filepath.Join(dir, "c"), KeyFile: filepath.Join(dir, "k")}
	os.WriteFile(src.CertFile, a, 0o600)
	os.WriteFile(src.KeyFile, bk, 0o600)
	if _, err := New(Config{Source: src, StateDir: dir}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	os.WriteFile(src.KeyFile, bk, 0o600)
	if _, err := New(Config{Source: certutil.Source{CertFile: filepath.Join(dir, "c"), KeyFile: filepath.Join(dir, "k")}, StateDir: dir, Host: "other.example"}); err == nil {
		t.Error("SAN mismatch accepted")
	}
}
