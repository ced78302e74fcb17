package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/tunnel/site"
)

// siteCallWait bounds each store call of the site commands: a reachable
// etcd answers in milliseconds.
const siteCallWait = 10 * time.Second

// sitePoll is how often `site push --wait` reads the health records (the
// servers rewrite theirs every 3 s).
const sitePoll = 500 * time.Millisecond

// siteFlags are the flags every site command takes.
type siteFlags struct {
	config string // this server's own config file: where the store is
}

func (f *siteFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "this server's config file (its site.store says where the site store is)")
}

// withStore connects to the site store the config file names and runs
// fn with it and a context bounding fn's first store calls; it returns
// fn's exit code.
func (f *siteFlags) withStore(inv *invocation, fn func(ctx context.Context, st *sitestore.Store) int) int {
	if f.config == "" {
		return inv.usageError("needs -config FILE (a server's config file with site.store)")
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		fmt.Fprintln(inv.stderr, err)
		return exitConfig
	}
	sc := cfg.SiteStore
	if sc == nil {
		fmt.Fprintf(inv.stderr, "underpass: %s: %v\n", f.config, errNoSiteStore)
		return exitConfig
	}
	st, err := sitestore.New(sitestore.Config{Endpoints: sc.Endpoints, Prefix: sc.Prefix,
		CAFile: sc.CAFile, CertFile: sc.CertFile, KeyFile: sc.KeyFile})
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass: site.store:", err)
		return exitConfig
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), siteCallWait)
	defer cancel()
	return fn(ctx, st)
}

// sitePushFlags are the flags of `underpass site push`.
type sitePushFlags struct {
	siteFlags
	wait     bool
	timeout  time.Duration
	revision int64
}

// sitePushCommand binds the flags of `underpass site push FILE`.
func sitePushCommand(fs *flag.FlagSet) runFunc {
	f := &sitePushFlags{}
	f.bind(fs)
	fs.BoolVar(&f.wait, "wait", false, "wait until every live server of the site runs the pushed configuration")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "how long -wait waits")
	fs.Int64Var(&f.revision, "revision", -1, "push only if the store's site configuration is still at this revision (as `site pull` printed it; 0: none yet)")
	return func(inv *invocation) int { return sitePush(f, inv) }
}

// sitePush validates FILE as a site configuration, refuses it when a live
// server of the site is too old to read it, writes it with a
// compare-and-swap, and with -wait waits until every live server runs it.
func sitePush(f *sitePushFlags, inv *invocation) int {
	file := inv.args[0]
	b, err := readSiteFile(file)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass:", err)
		return exitConfig
	}
	if _, err := config.ParseSite(file, b); err != nil {
		fmt.Fprintln(inv.stderr, err)
		return exitConfig
	}
	need, newer, err := config.RequiredSchema(b)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass:", err)
		return exitConfig
	}
	return f.withStore(inv, func(ctx context.Context, st *sitestore.Store) int {
		return pushTo(ctx, st, f, file, b, need, newer, inv)
	})
}

// pushTo is sitePush once the document is valid: it checks the live
// servers, writes, and waits.
func pushTo(ctx context.Context, st *sitestore.Store, f *sitePushFlags, file string, b []byte, need int, newer []string, inv *invocation) int {
	servers, err := st.Servers(ctx)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass: site store unavailable:", err)
		return exitFail
	}
	if old := tooOld(servers, need); len(old) > 0 {
		fmt.Fprintf(inv.stderr, "underpass: %s refused: it needs config schema %d (for %s), and these servers read an older one: %s. Upgrade them first, or leave those keys out. Nothing was written.\n",
			file, need, strings.Join(newer, ", "), strings.Join(old, ", "))
		return exitConfig
	}
	cur, err := st.GetConfig(ctx)
	if err != nil && !errors.Is(err, sitestore.ErrNoConfig) {
		fmt.Fprintln(inv.stderr, "underpass: site store unavailable:", err)
		return exitFail
	}
	based := cur.Revision
	if f.revision >= 0 {
		based = f.revision
	}
	hash := config.Hash(b)
	if cur.Hash == hash && based == cur.Revision {
		fmt.Fprintf(inv.stdout, "the site already has this configuration (revision %d, hash %s)\n", cur.Revision, hash)
	} else {
		rev, err := st.PutConfig(ctx, sitestore.SiteConfig{YAML: b, Hash: hash, Schema: need, Pushed: time.Now().UTC(), By: pusher()}, based)
		if err != nil {
			fmt.Fprintln(inv.stderr, "underpass:", err)
			return exitFail
		}
		fmt.Fprintf(inv.stdout, "pushed %s: revision %d, hash %s\n", file, rev, hash)
	}
	if !f.wait {
		return exitOK
	}
	return waitApplied(st, hash, f.timeout, inv)
}

// maxSiteConfig bounds a site configuration: etcd refuses requests over
// 1.5 MiB by default (--max-request-bytes), and real configurations are a
// few KiB.
const maxSiteConfig = 1 << 20

// readSiteFile reads a site configuration file.
func readSiteFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case err != nil:
		return nil, err
	case len(b) == 0:
		return nil, fmt.Errorf("%s: empty", path)
	case len(b) > maxSiteConfig:
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxSiteConfig)
	}
	return b, nil
}

// tooOld lists the servers that read a config schema older than need. A
// record without a schema is from a server before site configurations:
// schema 1.
func tooOld(servers []site.Health, need int) []string {
	var old []string
	for _, h := range servers {
		if max(h.ConfigSchema, 1) < need {
			old = append(old, fmt.Sprintf("%s (version %s, schema %d)", h.Server, orDash(h.Version), max(h.ConfigSchema, 1)))
		}
	}
	return old
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pusher names who pushes: user@host.
func pusher() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// waitApplied waits until every live server that takes the site
// configuration runs hash, or one refused it, or timeout passes; it
// prints each server's outcome and the servers that need a restart.
func waitApplied(st *sitestore.Store, hash string, timeout time.Duration, inv *invocation) int {
	deadline := time.Now().Add(timeout)
	var last []site.Health
	for {
		ctx, cancel := context.WithTimeout(context.Background(), siteCallWait)
		servers, err := st.Servers(ctx)
		cancel()
		if err == nil {
			last = servers
			done, refused := true, false
			for _, h := range servers {
				switch {
				case h.Config == "": // runs its own config file
				case h.Refused == hash:
					refused = true
				case h.Config != hash:
					done = false
				}
			}
			if done || refused {
				return reportApplied(servers, hash, inv)
			}
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(inv.stderr, "underpass: after %v not every server runs %s\n", timeout, hash)
			reportApplied(last, hash, inv)
			return exitFail
		}
		time.Sleep(sitePoll)
	}
}

// reportApplied prints where hash runs; exitFail when a server refused it.
func reportApplied(servers []site.Health, hash string, inv *invocation) int {
	code := exitOK
	if len(servers) == 0 {
		fmt.Fprintln(inv.stdout, "no live server in the site store: servers apply it when they start")
	}
	var restart []string
	for _, h := range servers {
		switch {
		case h.Config == "":
			fmt.Fprintf(inv.stdout, "%s\truns its own config file (no site.store.server_config)\n", h.Server)
		case h.Refused == hash:
			fmt.Fprintf(inv.stdout, "%s\trefused it: %s\n", h.Server, h.ConfigError)
			code = exitFail
		case h.Config == hash && len(h.Restart) > 0:
			fmt.Fprintf(inv.stdout, "%s\tapplied; rolling restart required for %s\n", h.Server, strings.Join(h.Restart, ", "))
			restart = append(restart, h.Server)
		case h.Config == hash:
			fmt.Fprintf(inv.stdout, "%s\tapplied\n", h.Server)
		default:
			fmt.Fprintf(inv.stdout, "%s\tstill runs %s\n", h.Server, h.Config)
		}
	}
	if len(restart) > 0 {
		fmt.Fprintf(inv.stdout, "rolling restart required: %s (one server at a time)\n", strings.Join(restart, ", "))
	}
	return code
}

// sitePullCommand binds the flags of `underpass site pull`.
func sitePullCommand(fs *flag.FlagSet) runFunc {
	f := &siteFlags{}
	f.bind(fs)
	return func(inv *invocation) int { return f.withStore(inv, pull(inv)) }
}

// pull prints the site configuration.
func pull(inv *invocation) func(ctx context.Context, st *sitestore.Store) int {
	return func(ctx context.Context, st *sitestore.Store) int {
		c, err := st.GetConfig(ctx)
		switch {
		case errors.Is(err, sitestore.ErrNoConfig):
			fmt.Fprintln(inv.stderr, "underpass:", err)
			return exitNotFound
		case err != nil:
			fmt.Fprintln(inv.stderr, "underpass: site store unavailable:", err)
			return exitFail
		}
		// The document alone on stdout, byte for byte: pushing it back
		// changes nothing.
		fmt.Fprintf(inv.stderr, "revision %d, hash %s, pushed %s by %s\n", c.Revision, c.Hash, c.Pushed.Local().Format(time.DateTime), orDash(c.By))
		_, _ = inv.stdout.Write(c.YAML)
		return exitOK
	}
}
