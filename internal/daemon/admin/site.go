package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// SiteServer is one server of the site in `underpass status --site`.
type SiteServer struct {
	Server string `json:"server"`
	// State is "up", "draining", "missing from the store" (this server
	// saw its health record, which has since expired: it stopped
	// announcing, or was stopped) or "unknown" (the store is unavailable:
	// the last record seen is shown).
	State        string    `json:"state"`
	Sessions     int       `json:"sessions"`
	Version      string    `json:"version,omitempty"`
	ConfigSchema int       `json:"config_schema,omitempty"`
	Config       string    `json:"config,omitempty"`       // the hash of the site configuration it runs
	ConfigError  string    `json:"config_error,omitempty"` // why it refused the newest one
	Restart      []string  `json:"restart,omitempty"`      // settings waiting for a restart
	Started      time.Time `json:"started"`
	Updated      time.Time `json:"updated"` // its record's last write
}

// SiteStatus answers `underpass status --site`.
type SiteStatus struct {
	// Store is "up", or "unavailable: <why>".
	Store   string       `json:"store"`
	Servers []SiteServer `json:"servers"`
}

// Site states.
const (
	StateUp       = "up"
	StateDraining = "draining"
	StateMissing  = "missing from the store"
	StateUnknown  = "unknown"
)

// errNoSite: the server runs without a site store.
var errNoSite = errors.New("this server has no site store (site.store)")

// siteRoutes adds the site's operator views: the servers of the site and
// site-wide ban lifts.
func siteRoutes(mux *http.ServeMux, b *Backend, reply func(http.ResponseWriter, int, any), fail func(http.ResponseWriter, int, error)) {
	mux.HandleFunc("GET /v1/site", func(w http.ResponseWriter, r *http.Request) {
		if b.Site == nil {
			fail(w, 501, errNoSite)
			return
		}
		reply(w, 200, b.Site(r.Context()))
	})
	mux.HandleFunc("POST /v1/bans/{addr}/lift", func(w http.ResponseWriter, r *http.Request) {
		a, err := netip.ParseAddr(r.PathValue("addr"))
		if err != nil {
			fail(w, 400, fmt.Errorf("%q is not an IP address", r.PathValue("addr")))
			return
		}
		reply(w, 200, LiftResult{Addr: a, WasBanned: b.Gateway.LiftBan(a)})
	})
}

// LiftResult answers `underpass bans lift IP`.
type LiftResult struct {
	Addr netip.Addr `json:"addr"`
	// WasBanned: the address was banned on this server. The lift goes to
	// every server of the site either way (with a site store).
	WasBanned bool `json:"was_banned_here"`
}

// SiteFunc reports the site's servers; the binary implements it over its
// site store.
type SiteFunc func(ctx context.Context) SiteStatus
