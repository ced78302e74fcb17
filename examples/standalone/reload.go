package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"time"

	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/tunnel"
)

// prepare completes a loaded configuration for the gateway: logger,
// access log and the identity section's authenticators. The returned
// release must be called when the identity is replaced or at exit.
func prepare(cfg *config.Config, logger *slog.Logger) (release func(), err error) {
	t := &cfg.Tunnel
	t.Logger = logger
	if cfg.Log.Access > 0 {
		t.FlowLog = func(r tunnel.FlowRecord) {
			attrs := []any{"user", r.User, "device_id", r.DeviceID, "session", r.Session, "proto", r.Proto,
				"src", r.Src, "bytes_up", r.BytesUp, "bytes_down", r.BytesDown, "seconds", r.Duration.Seconds()}
			if r.Proto == "dns" {
				attrs = append(attrs, "name", r.Name)
			} else {
				attrs = append(attrs, "dst", r.Dst)
			}
			if r.Err != nil {
				attrs = append(attrs, "err", r.Err)
			}
			logger.Info("access", attrs...)
		}
		t.FlowLogDNS = cfg.Log.Access >= 2
	}
	ictx, cancel := context.WithTimeout(context.Background(), idpTimeout)
	defer cancel()
	return cfg.BuildIdentity(ictx, logger)
}

// reload applies cfg, the config file read again (SIGHUP, an edit, or a
// pushed site configuration: R-C7), to the running gateway: live sessions
// stay; settings that need a restart are reported. On any error the
// running configuration is kept. It returns the new identity's release
// (the caller releases the old one) and what changed.
func reload(gw *tunnel.Gateway, cfg *config.Config, running *config.Config, logger *slog.Logger) (release func(), res tunnel.ReloadResult, err error) {
	release, err = prepare(cfg, logger)
	if err != nil {
		logger.Error("reload: identity rejected; keeping the running configuration", "err", err)
		return nil, res, err
	}
	t := cfg.Tunnel
	// The certificate store keeps serving (and follows file changes): a
	// reload never pins a static certificate.
	t.Certificate, t.GetCertificate = nil, running.Tunnel.GetCertificate
	t.ListenAddr = running.Tunnel.ListenAddr // a -listen flag wins over the file, as at start
	t.Events = running.Tunnel.Events
	// The site store connection stays; a changed site.store needs a restart.
	t.Site.Store = running.Tunnel.Site.Store
	if !reflect.DeepEqual(cfg.SiteStore, running.SiteStore) {
		logger.Warn("reload: these settings take effect only after a restart", "settings", []string{"site.store"})
	}
	res, err = gw.Reload(t)
	if err != nil {
		release()
		logger.Error("reload: configuration rejected; keeping the running one", "err", err)
		return nil, res, err
	}
	if len(res.NeedRestart) > 0 {
		logger.Warn("reload: these settings take effect only after a restart", "settings", config.Keys(res.NeedRestart))
	}
	logger.Info("reload: applied", "settings", config.Keys(res.Applied))
	return release, res, nil
}

// configPoll is how often the config file is checked for edits: cheap
// (a stat, and a hash only when size or time changed), and an operator's
// edit takes effect within seconds. Polling works on every filesystem,
// including bind mounts into containers where inotify events do not cross.
const configPoll = 2 * time.Second

// watchFile sends on changed whenever path's contents change.
func watchFile(ctx context.Context, path string, changed chan<- struct{}) {
	sig := func() string {
		fi, err := os.Stat(path)
		if err != nil {
			return "missing"
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "unreadable"
		}
		sum := sha256.Sum256(b)
		return fmt.Sprintf("%d:%x", fi.Size(), sum)
	}
	last := sig()
	t := time.NewTicker(configPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s := sig(); s != last {
				last = s
				select {
				case changed <- struct{}{}:
				default: // a reload is pending already
				}
			}
		}
	}
}
