// Command underpass runs the Underpass VPN gateway.
//
//	underpass serve                 embedded default: 127.0.0.1:8443, self-signed
//	                                certificate, demo user, prints the openconnect command
//	underpass serve -config FILE    the gateway described by a YAML file
//	underpass hash-password         bcrypt hash of a password read from stdin, for users:
//	underpass check config FILE     validate a config file and exit
//	underpass help [CMD]            the commands, or one command's usage and flags
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/internal/daemon/config"
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

// main runs the command line and exits with its exit code.
func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// hashPasswordCommand binds the flags of `underpass hash-password`.
func hashPasswordCommand(fs *flag.FlagSet) runFunc {
	cost := fs.Int("cost", bcrypt.DefaultCost, fmt.Sprintf("bcrypt cost (%d..%d); each step doubles the work of every sign-in", bcrypt.MinCost, bcrypt.MaxCost))
	return func(inv *invocation) int { return hashPassword(*cost, inv) }
}

// hashPassword prints the bcrypt hash, at cost, of the password on the
// first line of stdin.
func hashPassword(cost int, inv *invocation) int {
	if cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return inv.usageError("cost %d out of range %d..%d", cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	pw, err := bufio.NewReader(inv.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(inv.stderr, err)
		return exitFail
	}
	pw = strings.TrimRight(pw, "\r\n")
	if pw == "" {
		fmt.Fprintln(inv.stderr, "underpass hash-password: empty password on stdin")
		return exitUsage
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		fmt.Fprintln(inv.stderr, err)
		return exitFail
	}
	fmt.Fprintln(inv.stdout, string(h))
	return exitOK
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

// newLogger returns the logger the log section and -v ask for, writing to w.
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

// printBanner tells the operator where the gateway listens and, for the
// embedded default, how to connect to it.
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
