package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/tunnel/site"
)

// siteConfigWait bounds reading the site configuration from the store at
// start: a reachable etcd answers in milliseconds; an unreachable one
// sends the server to its cached copy instead of holding up the start.
const siteConfigWait = 5 * time.Second

// buildVersion is the release's version, set at link time:
//
//	go build -ldflags "-X main.buildVersion=v1.4.0" ./examples/standalone
//
// Empty: version() falls back to the build information.
var buildVersion string

// version is this binary's version: buildVersion, else the module version
// it was built at, else the VCS revision, else "devel".
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}

// siteState is what this server announces about its configuration in its
// health record (site.Health's Version... fields).
type siteState struct {
	serverConfig bool // the server configuration comes from the store

	mu      sync.Mutex
	applied sitestore.SiteConfig // the site configuration running (zero: none)
	refused string               // the hash of the newest one refused
	err     string               // why
	restart []string             // keys changed by it that wait for a restart
}

func (st *siteState) annotate(h *site.Health) {
	h.Version, h.ConfigSchema = version(), config.Schema
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.serverConfig {
		h.Config = st.applied.Hash
	}
	h.Refused, h.ConfigError, h.Restart = st.refused, st.err, slices.Clone(st.restart)
}

// setApplied records a site configuration now running, and the keys that
// wait for a restart.
func (st *siteState) setApplied(c sitestore.SiteConfig, restart []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.applied, st.restart = c, restart
	if st.refused == c.Hash {
		st.refused, st.err = "", ""
	}
}

func (st *siteState) setRefused(hash string, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.refused, st.err = hash, err.Error()
}

func (st *siteState) current() sitestore.SiteConfig {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.applied
}

// annotatedStore is the site store the gateway gets: its health records
// carry the server's version and configuration state.
type annotatedStore struct {
	*sitestore.Store // all of it: the gateway also uses its site.Leases
	st               *siteState
}

var _ site.Leases = annotatedStore{} // the gateway finds the leases by this assertion

func (a annotatedStore) Announce(ctx context.Context, h site.Health) error {
	a.st.annotate(&h)
	return a.Store.Announce(ctx, h)
}

// siteConfigName names a site configuration in error messages: where the
// store keeps it, and its revision.
func siteConfigName(prefix string, c sitestore.SiteConfig) string {
	return fmt.Sprintf("%sconfig@%d", prefix, c.Revision)
}

// cachedConfig is the cache file's JSON form.
type cachedConfig struct {
	YAML     string    `json:"yaml"`
	Hash     string    `json:"hash"`
	Schema   int       `json:"schema"`
	Revision int64     `json:"revision"`
	Pushed   time.Time `json:"pushed"`
}

// cachePath is site.store.cache, else site-config.json in the state
// directory.
func cachePath(sc *config.SiteStore) (string, error) {
	if sc.CacheFile != "" {
		return sc.CacheFile, nil
	}
	dir, err := stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "site-config.json"), nil
}

// writeCache keeps c as the last good site configuration: written to a
// temporary file and renamed, so a crash leaves the old copy or the new
// one. Mode 0600: it holds the site's users and IdP secrets.
func writeCache(path string, c sitestore.SiteConfig) error {
	b, err := json.Marshal(cachedConfig{YAML: string(c.YAML), Hash: c.Hash, Schema: c.Schema, Revision: c.Revision, Pushed: c.Pushed})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readCache(path string) (sitestore.SiteConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return sitestore.SiteConfig{}, err
	}
	var cc cachedConfig
	if err := json.Unmarshal(b, &cc); err != nil {
		return sitestore.SiteConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	if cc.YAML == "" || cc.Hash != config.Hash([]byte(cc.YAML)) {
		return sitestore.SiteConfig{}, fmt.Errorf("%s: damaged (its hash does not match)", path)
	}
	return sitestore.SiteConfig{YAML: []byte(cc.YAML), Hash: cc.Hash, Schema: cc.Schema, Revision: cc.Revision, Pushed: cc.Pushed}, nil
}

// startupSiteConfig finds the site configuration to start with: the
// store's, else (store unreachable, or its configuration refused, which
// state records for the health record) the cached last good one. It
// returns the merged configuration.
func startupSiteConfig(file string, sc *config.SiteStore, st *sitestore.Store, state *siteState, logger *slog.Logger) (*config.Config, sitestore.SiteConfig, error) {
	cache, err := cachePath(sc)
	if err != nil {
		return nil, sitestore.SiteConfig{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), siteConfigWait)
	c, err := st.GetConfig(ctx)
	cancel()
	var storeErr error
	if err == nil {
		cfg, lerr := config.LoadWithSite(file, siteConfigName(sc.Prefix, c), c.YAML)
		if lerr == nil {
			if werr := writeCache(cache, c); werr != nil {
				logger.Warn("site configuration: not cached", "path", cache, "err", werr)
			}
			return cfg, c, nil
		}
		storeErr = lerr
		state.setRefused(c.Hash, lerr)
		logger.Error("site configuration: the store's is refused; trying the cached copy", "revision", c.Revision, "err", lerr)
	} else {
		storeErr = err
		logger.Warn("site configuration: the store is unavailable; starting with the cached copy", "cache", cache, "err", err)
	}
	cached, cerr := readCache(cache)
	if cerr != nil {
		return nil, sitestore.SiteConfig{}, fmt.Errorf("no site configuration to start with: from the store: %w; cached copy: %v", storeErr, cerr)
	}
	cfg, err := config.LoadWithSite(file, cache, cached.YAML)
	if err != nil {
		return nil, sitestore.SiteConfig{}, err
	}
	return cfg, cached, nil
}

// latest keeps only the newest value sent: a server applies the newest
// site configuration and skips those pushed meanwhile.
func latest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// errNoSiteStore: a site command on a config without site.store.
var errNoSiteStore = errors.New("no site.store in this config file: the site configuration lives in the site store")
