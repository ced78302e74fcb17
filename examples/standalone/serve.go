package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/events"
	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/tunnel"
)

// serveFlags are the flags of `underpass serve`.
type serveFlags struct {
	config      string // the YAML config file; "" for the embedded default
	listen      string // overrides the config's listen address
	verbose     bool
	adminSocket string
}

// serveCommand binds the flags of `underpass serve`.
func serveCommand(fs *flag.FlagSet) runFunc {
	f := &serveFlags{}
	fs.StringVar(&f.config, "config", "", "YAML config file (default: embedded demo configuration)")
	fs.StringVar(&f.listen, "listen", "", "listen address, overrides the config")
	fs.BoolVar(&f.verbose, "v", false, "verbose (debug) logging")
	fs.StringVar(&f.adminSocket, "admin-socket", "", "admin socket for the underpass CLI (default "+defaultSocketHint+")")
	return func(inv *invocation) int { return serve(f, inv.stdout, inv.stderr) }
}

// server is one run of `underpass serve`: what its steps have set up so
// far, and how to undo it.
type server struct {
	flags          *serveFlags
	stdout, stderr io.Writer

	cfg                *config.Config
	demoUser, demoPass string // the embedded default's sign-in, for the banner
	logger             *slog.Logger
	ring               *events.Ring // what `underpass show events` reads
	certs              *certstore.Store
	storeCtx           context.Context // ends when serve returns
	release            func()          // releases the running identity
	gw                 *tunnel.Gateway
	listen             string                    // the address the gateway listens on
	errc               chan error                // the gateway's serve loop ended
	stopc              chan time.Duration        // `underpass server stop`, with its drain deadline
	sockPath           string                    // the admin socket
	stopAdmin          context.CancelFunc        // stops serving the admin socket
	store              *sitestore.Store          // site.store; nil: none
	site               *siteState                // with a store: what the health record says of the configuration
	pushed             chan sitestore.SiteConfig // site configurations pushed, the newest only
	drainDelay         time.Duration             // drain_delay as running (a reload may change it)

	cleanups []func() // run in reverse order when serve returns
}

// serve runs the gateway until SIGINT, SIGTERM or `underpass server stop`
// drains it; SIGHUP or an edit of the config file reloads it.
func serve(f *serveFlags, stdout, stderr io.Writer) int {
	s := &server{flags: f, stdout: stdout, stderr: stderr}
	defer s.cleanup()
	for _, step := range []func() int{s.loadConfig, s.raiseFDLimit, s.connectStore, s.prepareIdentity, s.startGateway, s.startAdminSocket} {
		if code := step(); code != exitOK {
			return code
		}
	}
	return s.loop()
}

// onExit registers f to run when serve returns, before the clean-ups
// registered earlier.
func (s *server) onExit(f func()) {
	s.cleanups = append(s.cleanups, f)
}

// cleanup runs the registered clean-ups, the last registered first.
func (s *server) cleanup() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
}

// fail prints a to stderr as one line and returns code.
func (s *server) fail(code int, a ...any) int {
	fmt.Fprintln(s.stderr, a...)
	return code
}

// loadConfig reads the config file (or builds the embedded default),
// applies -listen, makes the event ring and sets up logging: the standard
// log package goes through the logger.
func (s *server) loadConfig() int {
	var err error
	if s.flags.config != "" {
		if s.cfg, err = config.Load(s.flags.config); err != nil {
			return s.fail(exitConfig, err)
		}
	} else if s.cfg, s.demoUser, s.demoPass, err = embeddedDefault(); err != nil {
		return s.fail(exitFail, "underpass:", err)
	}
	if s.flags.listen != "" {
		s.cfg.Tunnel.ListenAddr = s.flags.listen
	}
	s.ring = events.NewRing(events.DefaultSize)
	s.logger = newLogger(s.stderr, s.cfg.Log, s.flags.verbose)
	// A dependency that prints with the standard log package would go
	// through our logger at debug level instead of straight to stderr
	// (none of the library's does since CONNECT-IP is Underpass's own).
	stdlog.SetFlags(0)
	stdlog.SetOutput(slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug).Writer())
	s.cfg.Tunnel.Logger = s.logger
	return exitOK
}

// connectStore connects to the site store (site.store), without waiting
// for etcd: a server starts, and serves, while the store is down
// (underpass_site_store_up says so). With site.store.server_config it
// reads the site configuration, from the store or else from its cached
// copy, and runs it with the server's own file.
func (s *server) connectStore() int {
	sc := s.cfg.SiteStore
	if sc == nil {
		return exitOK
	}
	st, err := sitestore.New(sitestore.Config{Endpoints: sc.Endpoints, Prefix: sc.Prefix,
		CAFile: sc.CAFile, CertFile: sc.CertFile, KeyFile: sc.KeyFile, Logger: s.logger})
	if err != nil {
		return s.fail(exitConfig, "underpass: site.store:", err)
	}
	s.onExit(func() { st.Close() }) // after the gateway's Close: it withdraws its health record
	s.store, s.site = st, &siteState{serverConfig: sc.ServerConfig}
	s.logger.Info("site store", "endpoints", sc.Endpoints, "prefix", sc.Prefix, "server_config", sc.ServerConfig)
	if !sc.ServerConfig {
		return exitOK
	}
	cfg, c, err := startupSiteConfig(s.flags.config, sc, st, s.site, s.logger)
	if err != nil {
		return s.fail(exitConfig, "underpass:", err)
	}
	if s.flags.listen != "" {
		cfg.Tunnel.ListenAddr = s.flags.listen
	}
	cfg.Tunnel.Logger = s.logger
	s.cfg = cfg
	s.site.setApplied(c, nil)
	s.logger.Info("site configuration", "revision", c.Revision, "hash", c.Hash)
	return exitOK
}

// raiseFDLimit raises the soft file descriptor limit (RLIMIT_NOFILE) to
// the hard one and logs both: each forwarded flow holds a descriptor, so
// this limit caps the flows (README "File descriptors"). A failure is
// logged, not fatal: the gateway serves within the limit it has.
func (s *server) raiseFDLimit() int {
	lim, err := fdlimit.Raise()
	if err != nil {
		s.logger.Warn("file descriptor limit not raised", "soft", lim.Soft, "hard", lim.Hard, "err", err)
		return exitOK
	}
	s.logger.Info("file descriptor limit", "soft", lim.Soft, "hard", lim.Hard)
	return exitOK
}

// prepareIdentity sets up the server certificate (a generated self-signed
// one when the config names none) and its store, and the identity
// section's authenticators.
func (s *server) prepareIdentity() int {
	if s.cfg.Tunnel.Certificate == nil {
		if code := s.selfSigned(); code != exitOK {
			return code
		}
	}
	certs, err := startCertStore(s.cfg, s.logger, s.ring.RecordCert)
	if err != nil {
		return s.fail(exitConfig, "underpass:", err)
	}
	s.certs = certs
	storeCtx, stopStore := context.WithCancel(context.Background())
	s.storeCtx = storeCtx
	s.onExit(stopStore)
	go certs.Run(storeCtx)
	if s.release, err = prepare(s.cfg, s.logger); err != nil {
		return s.fail(exitConfig, "underpass:", err)
	}
	// Released at exit is the identity running then: a reload replaces s.release.
	s.onExit(func() { s.release() })
	s.cfg.Tunnel.Events = s.ring.Record // `underpass show events` reads the session core's typed records
	return exitOK
}

// selfSigned loads, or creates, the self-signed certificate kept in the
// state directory, for the listen host, localhost and 127.0.0.1.
func (s *server) selfSigned() int {
	dir, err := stateDir()
	if err != nil {
		return s.fail(exitFail, "underpass:", err)
	}
	host, _, _ := net.SplitHostPort(s.cfg.Tunnel.ListenAddr)
	hosts := []string{"localhost", "127.0.0.1"}
	if host != "" && host != "127.0.0.1" && host != "localhost" {
		hosts = append([]string{host}, hosts...)
	}
	if s.cfg.Tunnel.Certificate, err = certutil.LoadOrCreate(dir, hosts); err != nil {
		return s.fail(exitFail, "underpass: certificate:", err)
	}
	s.cfg.CertSource = certutil.Source{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	return exitOK
}

// startGateway builds the gateway and starts serving: the VPN port, the
// demo page and the admin HTTP listener when configured; it prints the
// banner.
func (s *server) startGateway() int {
	if s.store != nil {
		s.cfg.Tunnel.Site.Store = annotatedStore{Store: s.store, st: s.site}
	}
	gw, err := tunnel.New(s.cfg.Tunnel)
	if err != nil {
		return s.fail(exitConfig, err)
	}
	s.gw, s.drainDelay = gw, s.cfg.Tunnel.DrainDelay
	s.onExit(func() { gw.Close() })
	l, err := net.Listen("tcp", listenAddr(s.cfg.Tunnel.ListenAddr))
	if err != nil {
		return s.fail(exitFail, "underpass:", err)
	}
	if s.cfg.DemoPage {
		if err := serveDemoPage(gw); err != nil {
			return s.fail(exitFail, "underpass: demo page:", err)
		}
	}
	if s.cfg.AdminHTTP != "" {
		if err := serveAdminHTTP(s.storeCtx, s.cfg, gw, s.certs, s.logger); err != nil {
			return s.fail(exitFail, "underpass: admin_http:", err)
		}
	}
	s.listen = l.Addr().String()
	printBanner(s.stdout, s.listen, s.certs.Status().Pin, s.demoUser, s.demoPass, gw)
	s.logger.Info("serving", "listen", s.listen, "tunnel_addr", gw.Addr())

	// AnyConnect over TLS, and on the same port number over UDP QUIC
	// (CONNECT-IP, R-P2) and DTLS (R-P5), unless disable_udp.
	errc := make(chan error, 1)
	s.errc = errc
	go func() { errc <- gw.ServeTCPAndUDP(l) }()
	return exitOK
}

// startAdminSocket serves the admin API for the underpass CLI on its
// Unix socket.
func (s *server) startAdminSocket() int {
	stopc := make(chan time.Duration, 1)
	s.stopc = stopc
	sockPath, err := socketPath(s.flags.adminSocket)
	if err != nil {
		return s.fail(exitFail, "underpass:", err)
	}
	al, err := admin.Listen(sockPath)
	if err != nil {
		return s.fail(exitFail, "underpass: admin socket:", err)
	}
	s.sockPath = sockPath
	actx, stopAdmin := context.WithCancel(context.Background())
	s.stopAdmin = stopAdmin
	s.onExit(stopAdmin)
	gw, bans, certs, ring, listen := s.gw, s.cfg.Tunnel.Bans, s.certs, s.ring, s.listen
	var siteFn admin.SiteFunc
	if s.store != nil {
		v := newSiteView(s.store)
		go v.run(actx)
		siteFn = v.status
	}
	go func() {
		_ = admin.Serve(actx, al, &admin.Backend{Gateway: gw, Bans: bans, Certs: certs, Events: ring, Listen: listen, Started: time.Now(), Site: siteFn,
			Stop: func(d time.Duration) {
				select {
				case stopc <- d:
				default:
				}
			}})
	}()
	s.logger.Info("admin socket", "path", sockPath)
	return exitOK
}

// loop serves until a stop: SIGHUP or an edit of the config file reloads
// it; SIGINT, SIGTERM or `underpass server stop` drains.
func (s *server) loop() int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	edited := make(chan struct{}, 1)
	if s.flags.config != "" {
		go watchFile(s.storeCtx, s.flags.config, edited)
	}
	s.pushed = make(chan sitestore.SiteConfig, 1)
	if s.site != nil && s.site.serverConfig {
		go func() {
			_ = s.store.WatchConfig(s.storeCtx, s.site.current().Revision, func(c sitestore.SiteConfig) { latest(s.pushed, c) })
		}()
	}
	// reloadFile applies the config file again (SIGHUP or an edit), with
	// the running site configuration if any.
	reloadFile := func() {
		cfg, err := s.loadAgain()
		if err != nil {
			s.logger.Error("reload: configuration rejected; keeping the running one", "err", err)
			return
		}
		_, _ = s.reload(cfg)
	}
	for {
		select {
		case c := <-s.pushed:
			s.applySiteConfig(c)
		case <-edited:
			s.logger.Info("reload: the config file changed")
			reloadFile()
		case d := <-s.stopc:
			s.logger.Info("draining", "by", "underpass server stop", "timeout", d)
			return s.drain(d)
		case sg := <-sig:
			if sg == syscall.SIGHUP {
				if s.flags.config == "" {
					s.logger.Info("reload: nothing to reload (embedded default configuration)")
					continue
				}
				reloadFile()
				continue
			}
			s.logger.Info("draining", "signal", sg.String())
			return s.drain(shutdownGrace)
		case err := <-s.errc:
			return s.fail(exitFail, "underpass:", err)
		}
	}
}

// loadAgain reads the server's own file again, with the running site
// configuration when it comes from the store.
func (s *server) loadAgain() (*config.Config, error) {
	if s.site == nil || !s.site.serverConfig {
		return config.Load(s.flags.config)
	}
	c := s.site.current()
	return config.LoadWithSite(s.flags.config, siteConfigName(s.cfg.SiteStore.Prefix, c), c.YAML)
}

// reload applies cfg to the running gateway; the identity it replaces is
// released once the gateway runs on the new one.
func (s *server) reload(cfg *config.Config) (tunnel.ReloadResult, error) {
	r, res, err := reload(s.gw, cfg, s.cfg, s.logger)
	if err != nil {
		return res, err
	}
	old := s.release
	s.release = r
	old()
	s.drainDelay = cfg.Tunnel.DrainDelay
	return res, nil
}

// applySiteConfig runs a pushed site configuration through the reload
// path, caches it when it runs, and records the outcome for the health
// record (`underpass site push --wait` reads it).
func (s *server) applySiteConfig(c sitestore.SiteConfig) {
	if c.Hash == s.site.current().Hash {
		return
	}
	log := s.logger.With("revision", c.Revision, "hash", c.Hash)
	cfg, err := config.LoadWithSite(s.flags.config, siteConfigName(s.cfg.SiteStore.Prefix, c), c.YAML)
	if err == nil {
		var res tunnel.ReloadResult
		if res, err = s.reload(cfg); err == nil {
			restart := config.Keys(res.NeedRestart)
			s.site.setApplied(c, restart)
			if path, perr := cachePath(s.cfg.SiteStore); perr != nil {
				log.Warn("site configuration: not cached", "err", perr)
			} else if werr := writeCache(path, c); werr != nil {
				log.Warn("site configuration: not cached", "path", path, "err", werr)
			}
			log.Info("site configuration applied")
			if len(restart) > 0 {
				log.Warn("site configuration: rolling restart required", "settings", restart)
			}
			return
		}
	}
	s.site.setRefused(c.Hash, err)
	log.Error("site configuration refused; keeping the running one", "err", err)
}

// drain shuts the gateway down: /readyz fails at once, the clients are
// told to reconnect after drain_delay, and grace bounds the rest. It logs
// the totals and removes the admin socket.
func (s *server) drain(grace time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), s.drainDelay+grace)
	defer cancel()
	if err := s.gw.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.logger.Warn("shutdown", "err", err)
	}
	<-s.errc
	st := s.gw.Stats()
	s.logger.Info("stopped", "sign_ins", st.SignIns, "bytes_in", st.BytesIn, "bytes_out", st.BytesOut,
		"tcp_flows", st.Stack.TCPFlows, "udp_flows", st.Stack.UDPFlows)
	s.stopAdmin()
	_ = os.Remove(s.sockPath)
	return exitOK
}
