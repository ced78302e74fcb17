// Package certstore holds the gateway's serving certificate (R-T3): it
// hands the current one to every TLS handshake, reloads it when its files
// change on disk (live sessions keep their connections), and stages an
// imported certificate to take effect at a later time, surviving restarts.
package certstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
)

// DefaultPoll is how often the certificate files are checked for changes:
// rotation tools rewrite them rarely, and a few seconds of delay before new
// handshakes see the new certificate is harmless.
const DefaultPoll = 5 * time.Second

// EventKind says what a certificate Event records.
type EventKind uint8

// Certificate event kinds.
const (
	EventLoaded    EventKind = iota + 1 // a certificate now serves (start, file change, activation)
	EventStaged                         // an imported certificate waits for EffectiveAt
	EventActivated                      // a staged certificate became due and was moved into place
)

var eventKindText = [...]string{EventLoaded: "certificate loaded", EventStaged: "certificate staged",
	EventActivated: "staged certificate activated"}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindText) {
		return eventKindText[k]
	}
	return "unknown"
}

// Event is one certificate change.
type Event struct {
	Time        time.Time
	Kind        EventKind
	Subject     string    // the leaf's common name
	NotAfter    time.Time // loaded: the leaf's expiry
	EffectiveAt time.Time // staged: when it takes effect
	Warnings    []string  // loaded: what the R-T2 checks warn about
}

// event delivers e to Config.Events, if set, stamped with the time.
func (s *Store) event(e Event) {
	if s.cfg.Events != nil {
		e.Time = s.cfg.now()
		s.cfg.Events(e)
	}
}

// Config configures a Store.
type Config struct {
	Source certutil.Source // the configured certificate files
	// StateDir keeps a staged import (and its due time) across restarts.
	StateDir string
	// Host is the site's public name or address, for the R-T2 checks.
	Host string
	// Roots verifies chains in the checks (nil: system roots).
	Roots *x509.CertPool
	// Poll is the file-change poll interval. Default DefaultPoll.
	Poll   time.Duration
	Logger *slog.Logger
	// Events, if set, receives a typed record of each certificate change
	// (what `underpass show events` lists). It is called synchronously;
	// it must not block or call back into the Store.
	Events func(Event)
	// now is the clock (tests).
	now func() time.Time
}

// Status describes the serving and the staged certificate.
type Status struct {
	Subject   string    `json:"subject"`
	SANs      []string  `json:"sans"`
	NotAfter  time.Time `json:"not_after"`
	Pin       string    `json:"pin"`
	Staged    *Staged   `json:"staged,omitempty"`
	LoadedAt  time.Time `json:"loaded_at"`
	Warnings  []string  `json:"warnings,omitempty"`
	SourceTag string    `json:"source"`
}

// Staged is a certificate waiting for its time.
type Staged struct {
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"not_after"`
	EffectiveAt time.Time `json:"effective_at"`
}

// Store is safe for concurrent use.
type Store struct {
	cfg Config
	log *slog.Logger
	cur atomic.Pointer[tls.Certificate]

	mu       sync.Mutex
	loadedAt time.Time
	warnings []string
	fileSig  string
	staged   *Staged
}

// staged file names in StateDir.
const (
	stagedCert = "staged.crt"
	stagedKey  = "staged.key"
	stagedPFX  = "staged.pfx"
	stagedAt   = "staged.at"
)

// New loads and checks the certificate; a staged import whose time has
// come is activated first. Errors from the R-T2 checks refuse the start.
func New(cfg Config) (*Store, error) {
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	s := &Store{cfg: cfg, log: cfg.Logger}
	if err := s.loadStaged(); err != nil {
		return nil, err
	}
	if err := s.activateDue(); err != nil {
		return nil, err
	}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate is a tls.Config.GetCertificate: the current certificate.
func (s *Store) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// Current returns the serving leaf certificate.
func (s *Store) Current() *x509.Certificate {
	l, _ := certutil.Leaf(s.cur.Load())
	return l
}

// Status reports the serving and staged certificates.
func (s *Store) Status() Status {
	c := s.cur.Load()
	l, _ := certutil.Leaf(c)
	pin, _ := certutil.Pin(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Subject: l.Subject.CommonName, NotAfter: l.NotAfter, Pin: pin, LoadedAt: s.loadedAt,
		Warnings: s.warnings, SourceTag: s.sourceTag()}
	st.SANs = append(st.SANs, l.DNSNames...)
	for _, ip := range l.IPAddresses {
		st.SANs = append(st.SANs, ip.String())
	}
	if s.staged != nil {
		cp := *s.staged
		st.Staged = &cp
	}
	return st
}

func (s *Store) sourceTag() string {
	if s.cfg.Source.PFXFile != "" {
		return s.cfg.Source.PFXFile
	}
	return s.cfg.Source.CertFile
}

// check runs the R-T2 rules; errors refuse the certificate.
func (s *Store) check(c *tls.Certificate) ([]string, error) {
	r := certutil.Check(c, s.cfg.Host, s.cfg.Roots, s.cfg.now())
	if !r.OK() {
		return nil, fmt.Errorf("certstore: certificate refused: %s", strings.Join(r.Errors, "; "))
	}
	return r.Warnings, nil
}

// reload loads the configured files and swaps them in if they pass.
func (s *Store) reload() error {
	c, err := s.cfg.Source.Load()
	if err != nil {
		return err
	}
	warns, err := s.check(c)
	if err != nil {
		return err
	}
	if c.Leaf == nil {
		c.Leaf, _ = certutil.Leaf(c)
	}
	s.cur.Store(c)
	s.mu.Lock()
	s.loadedAt, s.warnings, s.fileSig = s.cfg.now(), warns, s.signature()
	s.mu.Unlock()
	for _, w := range warns {
		s.log.Warn("certificate", "warning", w)
	}
	s.log.Info("certificate loaded", "subject", c.Leaf.Subject.CommonName, "not_after", c.Leaf.NotAfter)
	s.event(Event{Kind: EventLoaded, Subject: c.Leaf.Subject.CommonName, NotAfter: c.Leaf.NotAfter, Warnings: warns})
	return nil
}

// signature identifies the files' current contents cheaply.
func (s *Store) signature() string {
	var b strings.Builder
	for _, f := range []string{s.cfg.Source.CertFile, s.cfg.Source.KeyFile, s.cfg.Source.PFXFile} {
		if f == "" {
			continue
		}
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.String()
}

// Run polls the files and the staged import until ctx ends.
func (s *Store) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Tick()
		}
	}
}

// Tick does one poll: activate a due staged import, reload changed files.
func (s *Store) Tick() {
	if err := s.activateDue(); err != nil {
		s.log.Error("staged certificate", "err", err)
	}
	s.mu.Lock()
	changed := s.signature() != s.fileSig
	s.mu.Unlock()
	if changed {
		if err := s.reload(); err != nil {
			// Keep serving the old certificate; say why the new one failed.
			s.log.Error("certificate files changed but were refused; still serving the previous certificate", "err", err)
			s.mu.Lock()
			s.fileSig = s.signature()
			s.mu.Unlock()
		}
	}
}

// ImportRequest is a certificate to stage: PEM chain + key, or PFX.
type ImportRequest struct {
	CertPEM, KeyPEM []byte
	PFX             []byte
	PFXPassword     string
	Delay           time.Duration // 0: now
}

// Import checks a certificate and stages it to take effect after Delay
// (at once for 0). The staged files live in StateDir, so a restart before
// the time keeps the plan. On activation the certificate replaces the
// configured files.
func (s *Store) Import(req ImportRequest) (Staged, error) {
	var c *tls.Certificate
	var err error
	pfx := len(req.PFX) > 0
	switch {
	case pfx && s.cfg.Source.PFXFile == "":
		return Staged{}, errors.New("certstore: the configuration uses PEM files (tls.cert/tls.key): import PEM")
	case !pfx && s.cfg.Source.PFXFile != "":
		return Staged{}, errors.New("certstore: the configuration uses a PFX file (tls.pfx): import a PFX")
	case pfx:
		c, err = certutil.ParsePFX(req.PFX, req.PFXPassword)
	default:
		c, err = certutil.ParsePEM(req.CertPEM, req.KeyPEM)
	}
	if err != nil {
		return Staged{}, err
	}
	if _, err := s.check(c); err != nil {
		return Staged{}, err
	}
	if req.Delay < 0 {
		return Staged{}, errors.New("certstore: delay must not be negative")
	}
	leaf, _ := certutil.Leaf(c)
	st := Staged{Subject: leaf.Subject.CommonName, NotAfter: leaf.NotAfter, EffectiveAt: s.cfg.now().Add(req.Delay).UTC()}
	dir := s.cfg.StateDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Staged{}, err
	}
	files := map[string][]byte{stagedAt: []byte(st.EffectiveAt.Format(time.RFC3339Nano))}
	if pfx {
		files[stagedPFX] = req.PFX
	} else {
		files[stagedCert], files[stagedKey] = req.CertPEM, req.KeyPEM
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, b := range files {
		if err := writeAtomic(filepath.Join(dir, name), b); err != nil {
			return Staged{}, err
		}
	}
	s.staged = &st
	s.log.Info("certificate staged", "subject", st.Subject, "effective_at", st.EffectiveAt)
	s.event(Event{Kind: EventStaged, Subject: st.Subject, EffectiveAt: st.EffectiveAt})
	if req.Delay == 0 {
		s.mu.Unlock()
		err := s.activateDue()
		s.mu.Lock()
		if err != nil {
			return Staged{}, err
		}
	}
	return st, nil
}

// loadStaged reads a staged import left by an earlier run.
func (s *Store) loadStaged() error {
	b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, stagedAt))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	at, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("certstore: %s: %w", stagedAt, err)
	}
	src := s.stagedSource()
	c, err := src.Load()
	if err != nil {
		return fmt.Errorf("certstore: staged certificate: %w", err)
	}
	leaf, _ := certutil.Leaf(c)
	s.staged = &Staged{Subject: leaf.Subject.CommonName, NotAfter: leaf.NotAfter, EffectiveAt: at}
	s.log.Info("staged certificate found", "subject", leaf.Subject.CommonName, "effective_at", at)
	return nil
}

func (s *Store) stagedSource() certutil.Source {
	d := s.cfg.StateDir
	if s.cfg.Source.PFXFile != "" {
		return certutil.Source{PFXFile: filepath.Join(d, stagedPFX), PFXPassword: s.cfg.Source.PFXPassword}
	}
	return certutil.Source{CertFile: filepath.Join(d, stagedCert), KeyFile: filepath.Join(d, stagedKey)}
}

// activateDue installs a staged certificate whose time has come: it
// replaces the configured files (so the next start serves it too) and is
// served from the next handshake.
func (s *Store) activateDue() error {
	s.mu.Lock()
	st := s.staged
	s.mu.Unlock()
	if st == nil || s.cfg.now().Before(st.EffectiveAt) {
		return nil
	}
	src, dst := s.stagedSource(), s.cfg.Source
	pairs := [][2]string{{src.CertFile, dst.CertFile}, {src.KeyFile, dst.KeyFile}}
	if dst.PFXFile != "" {
		pairs = [][2]string{{src.PFXFile, dst.PFXFile}}
	}
	for _, p := range pairs {
		b, err := os.ReadFile(p[0])
		if err != nil {
			return err
		}
		if err := writeAtomic(p[1], b); err != nil {
			return err
		}
	}
	for _, n := range []string{stagedAt, stagedCert, stagedKey, stagedPFX} {
		_ = os.Remove(filepath.Join(s.cfg.StateDir, n))
	}
	s.mu.Lock()
	s.staged = nil
	s.mu.Unlock()
	s.log.Info("staged certificate activated", "subject", st.Subject)
	s.event(Event{Kind: EventActivated, Subject: st.Subject})
	if s.cur.Load() == nil {
		return nil // New loads it next
	}
	return s.reload()
}

// writeAtomic replaces name with b (temp file + rename), owner-only.
func writeAtomic(name string, b []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
