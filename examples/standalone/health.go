package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/health"
	"github.com/underpass/underpass/internal/daemon/metrics"
	"github.com/underpass/underpass/internal/daemon/outbound"
	"github.com/underpass/underpass/tunnel"
)

// serveAdminHTTP starts the admin HTTP listener (separate from the VPN
// port, loopback in the examples): the status page at /, /status.json,
// /metrics, /healthz and /readyz, until ctx ends.
func serveAdminHTTP(ctx context.Context, cfg *config.Config, gw *tunnel.Gateway, certs *certstore.Store, logger *slog.Logger) error {
	l, err := net.Listen("tcp", cfg.AdminHTTP)
	if err != nil {
		return err
	}
	dir, _ := stateDir()
	hc, err := outbound.Client(cfg.ExtraRootsDir)
	if err != nil {
		l.Close()
		return err
	}
	mon := health.New(health.Config{
		HTTPClient: hc,
		Gateway:    gw, Cert: certs.Current, CheckURL: cfg.Site.CheckURL, Dialer: cfg.Tunnel.Dialer,
		DiskPath: dir, Thresholds: cfg.Health,
	})
	go mon.Run(ctx)
	ready := func() error {
		if err := gw.Ready(); err != nil {
			return err
		}
		if r := mon.Report(); r.Overall == health.Unhealthy {
			for _, c := range r.Checks {
				if c.Level == health.Unhealthy {
					return errors.New(c.Name + ": " + c.Value)
				}
			}
		}
		return nil
	}
	mux := http.NewServeMux()
	m := metrics.Handler(gw, ready)
	for _, p := range []string{"GET /metrics", "GET /healthz", "GET /readyz"} {
		mux.Handle(p, m)
	}
	mux.Handle("/", mon.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second} // probes are quick; bound slow clients
	go func() { _ = srv.Serve(l) }()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	logger.Info("admin listener", "addr", l.Addr().String(), "paths", "/ (status page) /status.json /metrics /healthz /readyz")
	return nil
}
