// Package admin is the local operator API of a running `underpass serve`
// (R-O1): JSON over HTTP on a unix socket that only the server's user can
// open (the socket is 0600 inside a 0700 directory). The `underpass` CLI
// is its client.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/events"
	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/tunnel"
	"github.com/underpass/underpass/tunnel/site"
)

// Backend is what the API exposes.
type Backend struct {
	Gateway *tunnel.Gateway
	Bans    *auth.Bans       // the gateway's Config.Bans; nil: no bans
	Certs   *certstore.Store // nil: certificate import not available
	Events  *events.Ring     // nil: no events
	Listen  string           // the VPN listen address, for status
	Started time.Time
	// Stop drains and stops the server (SIGTERM's path), within timeout.
	Stop func(timeout time.Duration)
	// Site reports the servers of the site (status --site); nil: no site
	// store.
	Site SiteFunc
}

// Status is the answer to `underpass status`.
type Status struct {
	Listen    string `json:"listen"`
	Uptime    string `json:"uptime"`
	Ready     bool   `json:"ready"`
	Sessions  int    `json:"sessions"`
	Connected int    `json:"connected"`
	SignIns   uint64 `json:"sign_ins"`
	Failures  uint64 `json:"sign_in_failures"`
	BytesIn   uint64 `json:"bytes_in"`
	BytesOut  uint64 `json:"bytes_out"`
	TCPFlows  int64  `json:"tcp_flows_active"`
	UDPFlows  int64  `json:"udp_flows_active"`
	// FDs is the process's file descriptor limit (RLIMIT_NOFILE; each
	// flow holds one descriptor), OpenFDs how many are open (-1:
	// unknown), DialNoFD the dials refused for lack of them.
	FDs         fdlimit.Limits   `json:"fd_limits"`
	OpenFDs     int              `json:"open_fds"`
	DialNoFD    uint64           `json:"dial_no_fd"`
	Certificate certstore.Status `json:"certificate"`
}

// User aggregates a user's sessions for `show users`.
type User struct {
	User      string       `json:"user"`
	Sessions  int          `json:"sessions"`
	Addresses []netip.Addr `json:"addresses"`
	BytesIn   uint64       `json:"bytes_in"`
	BytesOut  uint64       `json:"bytes_out"`
}

// SiteSession is one session of the site, on any server, as the site
// store's address leases record it (`underpass show sessions --site`): a
// dual-stack session's IPv4 and IPv6 leases make one SiteSession.
type SiteSession struct {
	Address  netip.Addr `json:"address"`
	Address6 netip.Addr `json:"address6"` // a dual-stack session's IPv6 address (pool6); invalid (""): none
	Session  string     `json:"session"`
	Server   string     `json:"server"`
	User     string     `json:"user"`
	Client   netip.Addr `json:"client"` // invalid (null): unknown
	Since    time.Time  `json:"since"`
	Expires  time.Time  `json:"expires"` // the cookie's expiry
}

// siteSessions folds the site's leases (sorted by address, IPv4 first)
// into sessions, in the order of their first address.
func siteSessions(ls []site.Lease) []SiteSession {
	out := make([]SiteSession, 0, len(ls))
	at := make(map[string]int, len(ls))
	for _, l := range ls {
		i, ok := at[l.Session]
		if !ok {
			i = len(out)
			at[l.Session] = i
			out = append(out, SiteSession{Session: l.Session, Server: l.Server, User: l.User, Client: l.Client, Since: l.Since, Expires: l.Until})
		}
		if l.Addr.Is6() {
			out[i].Address6 = l.Addr
		} else {
			out[i].Address = l.Addr
		}
	}
	return out
}

// siteTimeout bounds the site store's answer to an operator's view: a
// reachable etcd lists 10,000 leases well within it.
const siteTimeout = 5 * time.Second

// ImportRequest stages a certificate (`underpass import-cert`).
type ImportRequest struct {
	CertPEM      []byte `json:"cert_pem,omitempty"`
	KeyPEM       []byte `json:"key_pem,omitempty"`
	PFX          []byte `json:"pfx,omitempty"`
	PFXPassword  string `json:"pfx_password,omitempty"`
	DelayMinutes int    `json:"delay_minutes"`
}

// apiError is the body of every error answer.
type apiError struct {
	Error string `json:"error"`
}

// maxBody bounds a request body: a PFX or PEM chain is a few KiB.
const maxBody = 1 << 20

// Handler returns the API.
func Handler(b *Backend) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, status int, err error) { reply(w, status, apiError{err.Error()}) }
	siteRoutes(mux, b, reply, fail)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := b.Gateway.Stats()
		s := Status{Listen: b.Listen, Uptime: time.Since(b.Started).Round(time.Second).String(), Ready: b.Gateway.Ready() == nil,
			Sessions: st.Sessions, Connected: st.Connected, SignIns: st.SignIns, Failures: st.SignInFailures,
			BytesIn: st.BytesIn, BytesOut: st.BytesOut, TCPFlows: st.Stack.TCPActive, UDPFlows: st.Stack.UDPActive,
			DialNoFD: st.Stack.DialNoFD, OpenFDs: -1}
		s.FDs, _ = fdlimit.Get()
		if n, err := fdlimit.Open(); err == nil {
			s.OpenFDs = n
		}
		if b.Certs != nil {
			s.Certificate = b.Certs.Status()
		}
		reply(w, 200, s)
	})
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		ss := b.Gateway.Sessions()
		sort.Slice(ss, func(i, j int) bool { return ss[i].Created.Before(ss[j].Created) })
		reply(w, 200, ss)
	})
	mux.HandleFunc("GET /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		for _, s := range b.Gateway.Sessions() {
			if s.ID == r.PathValue("id") {
				reply(w, 200, s)
				return
			}
		}
		fail(w, 404, fmt.Errorf("no session %q", r.PathValue("id")))
	})
	mux.HandleFunc("POST /v1/sessions/{id}/disconnect", func(w http.ResponseWriter, r *http.Request) {
		if err := b.Gateway.Disconnect(r.PathValue("id")); err != nil {
			fail(w, 404, fmt.Errorf("no session %q", r.PathValue("id")))
			return
		}
		reply(w, 200, map[string]string{"disconnected": r.PathValue("id")})
	})
	mux.HandleFunc("GET /v1/site/sessions", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), siteTimeout)
		defer cancel()
		ls, err := b.Gateway.SiteLeases(ctx)
		switch {
		case errors.Is(err, tunnel.ErrNoSiteLeases):
			fail(w, http.StatusConflict, errors.New("no site store on this server (site.store): the site's sessions are not shared"))
			return
		case err != nil:
			fail(w, http.StatusServiceUnavailable, fmt.Errorf("site store unavailable: %w", err))
			return
		}
		reply(w, 200, siteSessions(ls))
	})
	mux.HandleFunc("GET /v1/users", func(w http.ResponseWriter, r *http.Request) {
		byUser := map[string]*User{}
		for _, s := range b.Gateway.Sessions() {
			u := byUser[s.User]
			if u == nil {
				u = &User{User: s.User}
				byUser[s.User] = u
			}
			u.Sessions++
			for _, a := range []netip.Addr{s.Address, s.Address6} {
				if a.IsValid() {
					u.Addresses = append(u.Addresses, a)
				}
			}
			u.BytesIn += s.BytesIn
			u.BytesOut += s.BytesOut
		}
		out := make([]User, 0, len(byUser))
		for _, u := range byUser {
			out = append(out, *u)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
		reply(w, 200, out)
	})
	mux.HandleFunc("GET /v1/bans", func(w http.ResponseWriter, r *http.Request) {
		bans := []auth.Ban{}
		if b.Bans != nil {
			bans = b.Bans.List()
		}
		reply(w, 200, bans)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		ev := []events.Event{}
		if b.Events != nil {
			ev = b.Events.List()
		}
		reply(w, 200, ev)
	})
	mux.HandleFunc("POST /v1/cert", func(w http.ResponseWriter, r *http.Request) {
		if b.Certs == nil {
			fail(w, 501, errors.New("certificate import not available"))
			return
		}
		var req ImportRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&req); err != nil {
			fail(w, 400, fmt.Errorf("bad request: %v", err))
			return
		}
		if req.DelayMinutes < 0 {
			fail(w, 400, errors.New("delay must not be negative"))
			return
		}
		st, err := b.Certs.Import(certstore.ImportRequest{CertPEM: req.CertPEM, KeyPEM: req.KeyPEM, PFX: req.PFX,
			PFXPassword: req.PFXPassword, Delay: time.Duration(req.DelayMinutes) * time.Minute})
		if err != nil {
			fail(w, 422, err)
			return
		}
		reply(w, 200, st)
	})
	mux.HandleFunc("POST /v1/stop", func(w http.ResponseWriter, r *http.Request) {
		timeout := 10 * time.Second // as SIGTERM's default drain
		if d, err := time.ParseDuration(r.URL.Query().Get("timeout")); err == nil && d > 0 {
			timeout = d
		}
		reply(w, 202, map[string]string{"stopping": "draining for up to " + timeout.String()})
		if b.Stop != nil {
			go b.Stop(timeout)
		}
	})
	return mux
}

// ErrRunning means another server already answers on the socket.
var ErrRunning = errors.New("admin: another underpass server is running on this socket")

// Listen opens the admin socket at path: its directory is made 0700, a
// stale socket file is removed, a live one is refused.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%w (%s)", ErrRunning, path)
		}
		_ = os.Remove(path) // stale: a server that died
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve serves the API on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, b *Backend) error {
	srv := &http.Server{Handler: Handler(b), ReadHeaderTimeout: 10 * time.Second} // local clients are quick
	go func() { <-ctx.Done(); _ = srv.Close() }()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ErrNotRunning means nothing answers on the admin socket.
var ErrNotRunning = errors.New("admin: underpass is not running")

// StatusError is an error answer from the server.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// Client talks to a running server.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, hc: &http.Client{
		Timeout: 30 * time.Second, // a drain answers at once; nothing here takes longer
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Do sends a request and decodes the JSON answer into out (if non-nil).
func (c *Client) Do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://underpass"+path, rd)
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return fmt.Errorf("%w (no admin socket at %s); start it with `underpass serve`", ErrNotRunning, c.path)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		_ = json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e)
		return &StatusError{Code: resp.StatusCode, Msg: e.Error}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
