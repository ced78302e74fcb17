package main

import (
	"log/slog"
	"path/filepath"

	"github.com/underpass/underpass/internal/certstore"
	"github.com/underpass/underpass/internal/config"
	"github.com/underpass/underpass/internal/outbound"
)

// startCertStore serves the configured certificate through a store that
// follows file changes and staged imports (R-T3); the gateway asks it on
// every handshake.
func startCertStore(cfg *config.Config, logger *slog.Logger) (*certstore.Store, error) {
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
	})
	if err != nil {
		return nil, err
	}
	cfg.Tunnel.GetCertificate = st.GetCertificate
	cfg.Tunnel.Certificate = nil
	return st, nil
}
