// Command underpass runs the Underpass VPN gateway.
//
//	underpass serve                 embedded default: 127.0.0.1:8443, self-signed
//	                                certificate, demo user, prints the openconnect command
//	underpass serve -config FILE    the gateway described by a YAML file
//	underpass hash-password         bcrypt hash of a password read from stdin, for users:
//	underpass check config FILE     validate a config file and exit
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/internal/admin"
	"github.com/underpass/underpass/internal/certutil"
	"github.com/underpass/underpass/internal/config"
	"github.com/underpass/underpass/internal/events"
	"github.com/underpass/underpass/tunnel"
)

// Exit codes, for scripts.
const (
	exitOK     = 0
	exitFail   = 1 // runtime failure
	exitUsage  = 2 // bad command line
	exitConfig = 3 // invalid configuration
)

// defaultListen is the embedded default's address: loopback, and a port
// above 1024 so no privilege is needed.
const defaultListen = "127.0.0.1:8443"

// idpTimeout bounds OIDC discovery at start: an IdP that does not answer
// in this time is reported instead of hanging the start.
const idpTimeout = 30 * time.Second

// shutdownGrace bounds the drain on SIGINT/SIGTERM.
const shutdownGrace = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  underpass serve [-config FILE] [-listen ADDR] [-v]
  underpass check config FILE
  underpass check cert (-config FILE | --cert F --key F | --pfx F [--password-file F]) [--host NAME]
  underpass check network -config FILE
  underpass hash-password [-cost N] < password
  underpass status [--json]
  underpass show users|sessions|bans|events [--json]
  underpass show session ID [--json]
  underpass disconnect ID
  underpass import-cert (--cert site.crt --key site.key | --pfx site.pfx [--password-file F]) [--delay MINUTES]
  underpass server stop [--timeout 10s]
every command that talks to a running server takes -admin-socket PATH; exit codes:
  0 ok, 1 failure, 2 usage, 3 config, 4 server not running, 5 not found
`)
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "check":
		if len(args) >= 2 && args[1] == "cert" {
			return checkCert(args[2:], stdout, stderr)
		}
		if len(args) >= 2 && args[1] == "network" {
			return checkNetwork(args[2:], stdout, stderr)
		}
		if len(args) != 3 || args[1] != "config" {
			usage(stderr)
			return exitUsage
		}
		if _, err := config.Load(args[2]); err != nil {
			fmt.Fprintln(stderr, err)
			return exitConfig
		}
		fmt.Fprintf(stdout, "%s: OK\n", args[2])
		return exitOK
	case "hash-password":
		fs := flag.NewFlagSet("hash-password", flag.ContinueOnError)
		fs.SetOutput(stderr)
		cost := fs.Int("cost", bcrypt.DefaultCost, fmt.Sprintf("bcrypt cost (%d..%d); each step doubles the work of every sign-in", bcrypt.MinCost, bcrypt.MaxCost))
		if err := fs.Parse(args[1:]); err != nil {
			return exitUsage
		}
		if *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
			fmt.Fprintf(stderr, "hash-password: cost %d out of range %d..%d\n", *cost, bcrypt.MinCost, bcrypt.MaxCost)
			return exitUsage
		}
		pw, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(stderr, err)
			return exitFail
		}
		pw = strings.TrimRight(pw, "\r\n")
		if pw == "" {
			fmt.Fprintln(stderr, "hash-password: empty password on stdin")
			return exitUsage
		}
		h, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitFail
		}
		fmt.Fprintln(stdout, string(h))
		return exitOK
	case "status", "show", "disconnect", "import-cert", "server":
		return cli(args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func serve(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", "", "YAML config file (default: embedded demo configuration)")
	listen := fs.String("listen", "", "listen address, overrides the config")
	verbose := fs.Bool("v", false, "verbose (debug) logging")
	adminSock := fs.String("admin-socket", "", "admin socket for the underpass CLI (default "+defaultSocketHint+")")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}

	var (
		cfg      *config.Config
		demoUser string
		demoPass string
		err      error
	)
	if *cfgFile != "" {
		if cfg, err = config.Load(*cfgFile); err != nil {
			fmt.Fprintln(stderr, err)
			return exitConfig
		}
	} else {
		cfg, demoUser, demoPass, err = embeddedDefault()
		if err != nil {
			fmt.Fprintln(stderr, "underpass:", err)
			return exitFail
		}
	}
	if *listen != "" {
		cfg.Tunnel.ListenAddr = *listen
	}
	logger := newLogger(stderr, cfg.Log, *verbose)
	ring := events.NewRing(events.DefaultSize)
	logger = slog.New(events.Tap(logger.Handler(), ring))
	// Libraries that print with the standard log package (connect-ip-go
	// reports each dropped datagram so) go through our logger at debug
	// level instead of straight to stderr.
	stdlog.SetFlags(0)
	stdlog.SetOutput(slog.NewLogLogger(logger.Handler(), slog.LevelDebug).Writer())
	cfg.Tunnel.Logger = logger

	if cfg.Tunnel.Certificate == nil {
		dir, err := stateDir()
		if err != nil {
			fmt.Fprintln(stderr, "underpass:", err)
			return exitFail
		}
		host, _, _ := net.SplitHostPort(cfg.Tunnel.ListenAddr)
		hosts := []string{"localhost", "127.0.0.1"}
		if host != "" && host != "127.0.0.1" && host != "localhost" {
			hosts = append([]string{host}, hosts...)
		}
		if cfg.Tunnel.Certificate, err = certutil.LoadOrCreate(dir, hosts); err != nil {
			fmt.Fprintln(stderr, "underpass: certificate:", err)
			return exitFail
		}
		cfg.CertSource = certutil.Source{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	}
	certs, err := startCertStore(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitConfig
	}
	storeCtx, stopStore := context.WithCancel(context.Background())
	defer stopStore()
	go certs.Run(storeCtx)
	id, err := prepare(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitConfig
	}
	defer func() { id.Close() }()
	cfg.Tunnel.Events = ring.Record // `underpass show events` reads the session core's typed records

	gw, err := tunnel.New(cfg.Tunnel)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	defer gw.Close()
	l, err := net.Listen("tcp", listenAddr(cfg.Tunnel.ListenAddr))
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitFail
	}
	if cfg.DemoPage {
		if err := serveDemoPage(gw); err != nil {
			fmt.Fprintln(stderr, "underpass: demo page:", err)
			return exitFail
		}
	}
	if cfg.AdminHTTP != "" {
		if err := serveAdminHTTP(storeCtx, cfg, gw, certs, logger); err != nil {
			fmt.Fprintln(stderr, "underpass: admin_http:", err)
			return exitFail
		}
	}
	pin := certs.Status().Pin
	printBanner(stdout, l.Addr().String(), pin, demoUser, demoPass, gw)
	logger.Info("serving", "listen", l.Addr().String(), "tunnel_addr", gw.Addr())

	// AnyConnect over TLS, and on the same port number over UDP QUIC
	// (CONNECT-IP, R-P2) and DTLS (R-P5), unless disable_udp.
	errc := make(chan error, 1)
	go func() { errc <- gw.ServeTCPAndUDP(l) }()
	stopc := make(chan time.Duration, 1)
	sockPath, err := socketPath(*adminSock)
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitFail
	}
	al, err := admin.Listen(sockPath)
	if err != nil {
		fmt.Fprintln(stderr, "underpass: admin socket:", err)
		return exitFail
	}
	actx, stopAdmin := context.WithCancel(context.Background())
	defer stopAdmin()
	go func() {
		_ = admin.Serve(actx, al, &admin.Backend{Gateway: gw, Certs: certs, Events: ring, Listen: l.Addr().String(), Started: time.Now(),
			Stop: func(d time.Duration) {
				select {
				case stopc <- d:
				default:
				}
			}})
	}()
	logger.Info("admin socket", "path", sockPath)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	edited := make(chan struct{}, 1)
	if *cfgFile != "" {
		go watchFile(storeCtx, *cfgFile, edited)
	}
	for {
		grace := shutdownGrace
		select {
		case <-edited:
			logger.Info("reload: the config file changed")
			if nid := reload(gw, *cfgFile, cfg, logger); nid != nil {
				old := id
				id = nid
				old.Close()
			}
			continue
		case d := <-stopc:
			logger.Info("draining", "by", "underpass server stop", "timeout", d)
			grace = d
		case s := <-sig:
			if s == syscall.SIGHUP {
				if *cfgFile == "" {
					logger.Info("reload: nothing to reload (embedded default configuration)")
					continue
				}
				if nid := reload(gw, *cfgFile, cfg, logger); nid != nil {
					old := id
					id = nid
					old.Close()
				}
				continue
			}
			logger.Info("draining", "signal", s.String())
		case err := <-errc:
			fmt.Fprintln(stderr, "underpass:", err)
			return exitFail
		}
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			logger.Warn("shutdown", "err", err)
		}
		<-errc
		st := gw.Stats()
		logger.Info("stopped", "sign_ins", st.SignIns, "bytes_in", st.BytesIn, "bytes_out", st.BytesOut,
			"tcp_flows", st.Stack.TCPFlows, "udp_flows", st.Stack.UDPFlows)
		stopAdmin()
		_ = os.Remove(sockPath)
		return exitOK
	}
}

// listenAddr defaults the config's listen address.
func listenAddr(a string) string {
	if a == "" {
		return tunnel.DefaultListenAddr
	}
	return a
}

// embeddedDefault is the zero-configuration demo: loopback, a generated
// demo password kept in the state directory, the demo page on.
func embeddedDefault() (*config.Config, string, string, error) {
	dir, err := stateDir()
	if err != nil {
		return nil, "", "", err
	}
	pwFile := filepath.Join(dir, "demo-password")
	pw, err := os.ReadFile(pwFile)
	if errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 12) // 96 bits: unguessable, still typeable
		_, _ = rand.Read(b)
		pw = []byte(base64.RawURLEncoding.EncodeToString(b))
		if err := os.WriteFile(pwFile, pw, 0o600); err != nil {
			return nil, "", "", err
		}
	} else if err != nil {
		return nil, "", "", err
	}
	pass := strings.TrimSpace(string(pw))
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		return nil, "", "", err
	}
	c := &config.Config{
		Users:    []config.User{{Name: "demo", PasswordHash: string(h)}},
		DemoPage: true,
	}
	c.Tunnel.ListenAddr = defaultListen
	c.Tunnel.Pool = tunnel.DefaultPool
	return c, "demo", pass, nil
}

// stateDir is where the generated certificate and demo password live:
// $XDG_CONFIG_HOME/underpass (usually ~/.config/underpass).
func stateDir() (string, error) {
	base, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	d := filepath.Join(base, "underpass")
	return d, os.MkdirAll(d, 0o700)
}

func newLogger(w io.Writer, lc config.LogConfig, verbose bool) *slog.Logger {
	lvl := slog.LevelInfo
	switch lc.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	if verbose {
		lvl = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if lc.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serveDemoPage answers http://<gateway tunnel address>/ inside the tunnel,
// so a first connect has something to reach.
func serveDemoPage(gw *tunnel.Gateway) error {
	l, err := gw.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second, // in-tunnel clients are still clients: bound slow headers
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			from := r.RemoteAddr
			user := "unknown"
			if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
				from = host
				if a, err := netip.ParseAddr(host); err == nil {
					if s, ok := gw.WhoIs(a); ok {
						user = s.User
					}
				}
			}
			fmt.Fprintf(w, "Underpass: connected as %s from %s\n", user, from)
		}),
	}
	go func() { _ = srv.Serve(l) }()
	return nil
}

func printBanner(w io.Writer, listen, pin, user, pass string, gw *tunnel.Gateway) {
	url := "https://" + listen
	fmt.Fprintf(w, "Underpass gateway listening on %s (AnyConnect over TLS; its DTLS and QUIC CONNECT-IP on the same UDP port unless disabled)\n", listen)
	if user == "" {
		fmt.Fprintf(w, "  server certificate: %s\n", pin)
		return
	}
	fmt.Fprintf(w, "  user: %s  password: %s\n\n", user, pass)
	fmt.Fprintf(w, "Connect without root (userspace; SOCKS5 proxy on 127.0.0.1:11080):\n")
	fmt.Fprintf(w, "  echo %s | openconnect --passwd-on-stdin --servercert %s --user %s --script-tun --script \"ocproxy -D 11080\" %s\n", pass, pin, user, url)
	fmt.Fprintf(w, "  curl --socks5-hostname 127.0.0.1:11080 http://%s/\n\n", gw.Addr())
	fmt.Fprintf(w, "Connect with a tun device (root; routes all traffic through the gateway):\n")
	fmt.Fprintf(w, "  echo %s | sudo openconnect --passwd-on-stdin --servercert %s --user %s %s\n", pass, pin, user, url)
	fmt.Fprintf(w, "  curl http://%s/\n", gw.Addr())
}
