// Command socks is a local SOCKS5 and HTTP CONNECT proxy that carries every
// connection through an Underpass VPN tunnel (tunnel.Client), without a TUN
// device or root: what ocproxy is for openconnect, as one Go program.
//
//	echo "$PASSWORD" | socks -server vpn.example.com -user alice -password-file - -listen 127.0.0.1:1080
//	curl --socks5-hostname 127.0.0.1:1080 http://intranet/
//	curl --proxy http://127.0.0.1:1080 https://wiki.corp.example/
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/underpass/underpass/examples/socks/proxy"
	"github.com/underpass/underpass/tunnel"
)

// connectTimeout bounds sign-in and tunnel setup at start.
const connectTimeout = 60 * time.Second

// deviceConnectTimeout replaces it for the device-code sign-in, which waits
// for the user: 15 minutes is Entra's device-code lifetime (Dex's is 5).
const deviceConnectTimeout = 15 * time.Minute

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil))
}

// run parses flags, connects and serves until a signal (or stop closes).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, stop <-chan struct{}) int {
	fs := flag.NewFlagSet("socks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "gateway: host[:port] or https://host[:port]")
	user := fs.String("user", "", "username (with -password-file)")
	pwFile := fs.String("password-file", "", "file holding the password (- for stdin)")
	tokFile := fs.String("token-file", "", "file holding an OIDC access token, re-read at each sign-in")
	devIssuer := fs.String("device-issuer", "", "sign in with the OAuth2 device code at this OIDC issuer (no browser here: open the printed link elsewhere)")
	devClient := fs.String("device-client", "", "OAuth2 client ID for -device-issuer (a public client the IdP allows the device flow)")
	certFile := fs.String("cert", "", "client certificate (PEM), with -key")
	keyFile := fs.String("key", "", "client certificate key (PEM)")
	pin := fs.String("servercert", "", "accept the gateway certificate with this pin-sha256:... (as openconnect)")
	caFile := fs.String("cafile", "", "CA bundle (PEM) that verifies the gateway; default: system roots")
	transport := fs.String("transport", "auto", "auto (QUIC, then TLS), quic or tls")
	fingerprint := fs.String("fingerprint", "go", "TLS ClientHello on the TLS path: go, chrome, firefox, ios, android")
	listen := fs.String("listen", "127.0.0.1:1080", "proxy listen address (SOCKS5 and HTTP CONNECT)")
	proxyUser := fs.String("proxy-user", "", "require this username from proxy clients (password in $SOCKS_PROXY_PASSWORD)")
	verbose := fs.Bool("v", false, "verbose logging")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	lvl := slog.LevelInfo
	if *verbose {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	cfg := tunnel.ClientConfig{Server: *server, Username: *user, PinSHA256: *pin, Fingerprint: *fingerprint, Logger: log}
	switch *transport {
	case "auto":
	case "quic":
		cfg.Transport = tunnel.TransportQUIC
	case "tls":
		cfg.Transport = tunnel.TransportTLS
	default:
		fmt.Fprintf(stderr, "socks: -transport %q: want auto, quic or tls\n", *transport)
		return 2
	}
	if *pwFile != "" {
		pw, err := readSecret(*pwFile, stdin)
		if err != nil {
			fmt.Fprintln(stderr, "socks: password:", err)
			return 2
		}
		cfg.Password = pw
	}
	if *tokFile != "" {
		f := *tokFile
		cfg.TokenSource = func(context.Context) (string, error) { return readSecret(f, nil) }
	}
	timeout := connectTimeout
	if (*devIssuer == "") != (*devClient == "") {
		fmt.Fprintln(stderr, "socks: -device-issuer and -device-client go together")
		return 2
	}
	if *devIssuer != "" {
		ts, err := tunnel.DeviceCodeTokenSource(tunnel.DeviceCodeConfig{Issuer: *devIssuer, ClientID: *devClient,
			Prompt: func(_ context.Context, uri, code, complete string) error {
				fmt.Fprintf(stderr, "socks: to sign in, open %s and enter the code %s\n", uri, code)
				if complete != "" {
					fmt.Fprintf(stderr, "socks: or open %s\n", complete)
				}
				return nil
			}})
		if err != nil {
			fmt.Fprintln(stderr, "socks:", err)
			return 2
		}
		cfg.TokenSource, timeout = ts, deviceConnectTimeout
	}
	if (*certFile == "") != (*keyFile == "") {
		fmt.Fprintln(stderr, "socks: -cert and -key go together")
		return 2
	}
	if *certFile != "" {
		c, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(stderr, "socks: client certificate:", err)
			return 2
		}
		cfg.Certificate = &c
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(stderr, "socks:", err)
			return 2
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "socks: %s: no PEM certificates\n", *caFile)
			return 2
		}
	}

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "socks:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	c, err := tunnel.Dial(ctx, cfg)
	cancel()
	if err != nil {
		l.Close()
		fmt.Fprintln(stderr, "socks:", err)
		var ce *tunnel.ConfigError
		if errors.As(err, &ce) {
			return 2
		}
		return 1
	}
	defer c.Close()
	srv := &proxy.Server{Dial: c.DialContext, Logger: log, Username: *proxyUser, Password: os.Getenv("SOCKS_PROXY_PASSWORD")}
	fmt.Fprintf(stdout, "tunnel up over %s, address %s; SOCKS5 and HTTP CONNECT proxy on %s\n", c.Transport(), c.Addr(), l.Addr())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	code := 0
	select {
	case <-sig:
	case <-stop:
	case <-c.Done():
		fmt.Fprintln(stderr, "socks: tunnel down:", c.Err())
		code = 1
	case err := <-errc:
		fmt.Fprintln(stderr, "socks:", err)
		code = 1
	}
	srv.Close()
	return code
}

// readSecret reads a one-line secret from a file ("-": r).
func readSecret(name string, r io.Reader) (string, error) {
	var b []byte
	var err error
	if name == "-" && r != nil {
		b, err = io.ReadAll(io.LimitReader(r, 64<<10)) // a token is a few KiB at most
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: empty", name)
	}
	return s, nil
}
