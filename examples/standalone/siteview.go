package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/tunnel/site"
)

// siteViewEvery is how often a server reads the site's health records for
// `status --site`: a server that dies between two reads is remembered and
// shown as missing from the store. The records expire 10 s after a
// server's last announcement, so a few seconds is enough.
const siteViewEvery = 3 * time.Second

// siteViewCall bounds one read of the health records.
const siteViewCall = 2 * time.Second

// siteView remembers every server of the site this server has seen in the
// store (until it restarts), so a server whose health record expired is
// listed as missing rather than silently dropped.
type siteView struct {
	store site.Store

	mu   sync.Mutex
	seen map[string]site.Health // the last record of each server seen
}

func newSiteView(st site.Store) *siteView {
	return &siteView{store: st, seen: map[string]site.Health{}}
}

// run reads the records every siteViewEvery until ctx ends.
func (v *siteView) run(ctx context.Context) {
	t := time.NewTicker(siteViewEvery)
	defer t.Stop()
	for {
		_, _ = v.read(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// read lists the live records and remembers them.
func (v *siteView) read(ctx context.Context) ([]site.Health, error) {
	ctx, cancel := context.WithTimeout(ctx, siteViewCall)
	defer cancel()
	hs, err := v.store.Servers(ctx)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	for _, h := range hs {
		v.seen[h.Server] = h
	}
	v.mu.Unlock()
	return hs, nil
}

// status is the answer to `status --site`.
func (v *siteView) status(ctx context.Context) admin.SiteStatus {
	live, err := v.read(ctx)
	v.mu.Lock()
	seen := maps.Clone(v.seen)
	v.mu.Unlock()
	st := admin.SiteStatus{Store: "up"}
	if err != nil {
		st.Store = "unavailable: " + err.Error()
	}
	isLive := map[string]bool{}
	for _, h := range live {
		isLive[h.Server] = true
	}
	for _, name := range slices.Sorted(maps.Keys(seen)) {
		h := seen[name]
		state := admin.StateUp
		switch {
		case err != nil:
			state = admin.StateUnknown
		case !isLive[name]:
			state = admin.StateMissing
		case h.Draining:
			state = admin.StateDraining
		}
		st.Servers = append(st.Servers, admin.SiteServer{Server: h.Server, State: state, Sessions: h.Sessions,
			Version: h.Version, ConfigSchema: h.ConfigSchema, Config: h.Config, ConfigError: h.ConfigError,
			Restart: h.Restart, Started: h.Started, Updated: h.Updated})
	}
	return st
}

// printSite writes `status --site` as a table.
func printSite(w io.Writer, st admin.SiteStatus) {
	fmt.Fprintf(w, "store\t%s\n\n", st.Store)
	fmt.Fprintln(w, "SERVER\tSTATE\tSESSIONS\tVERSION\tCONFIG\tUPDATED\tNOTES")
	for _, s := range st.Servers {
		var notes []string
		if s.ConfigError != "" {
			notes = append(notes, "refused the newest site configuration: "+s.ConfigError)
		}
		if len(s.Restart) > 0 {
			notes = append(notes, "rolling restart required for "+strings.Join(s.Restart, ", "))
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.Server, s.State, s.Sessions, orDash(s.Version), orDash(s.Config),
			s.Updated.Local().Format(time.TimeOnly), strings.Join(notes, "; "))
	}
}
