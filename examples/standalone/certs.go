package main

import (
	"log/slog"
	"path/filepath"

	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/outbound"
)

// startCertStore serves the configured certificate through a store that
// follows file changes and staged imports (R-T3); the gateway asks it on
// every handshake. events receives its typed records (show events).
func startCertStore(cfg *config.Config, logger *slog.Logger, events func(certstore.Event)) (*certstore.Store, error) {
	dir, err := stateDir()
	if err != nil {
		return nil, err
	}
	roots, err := outbound.Roots(cfg.ExtraRootsDir)
	if err != nil {
		return nil, err
	}
	st, err := certstore.New(certstore.Config{
		Roots:  roots,
		Source: cfg.CertSource, StateDir: filepath.Join(dir, "staged-cert"), Host: cfg.Site.Host, Logger: logger,
		Events: events,
	})
	if err != nil {
		return nil, err
	}
	cfg.Tunnel.GetCertificate = st.GetCertificate
	cfg.Tunnel.Certificate = nil
	return st, nil
}
