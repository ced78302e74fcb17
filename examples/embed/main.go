// Command embed shows Underpass hosted inside an existing HTTPS website:
// the site keeps answering every ordinary request, the VPN (AnyConnect over
// TLS, and CONNECT-IP over QUIC on the same port number) lives behind a secret
// path, and every flow a VPN client opens leaves through the program's own
// dialer (here: one that writes an audit line per connection).
//
//	embed -listen :8443 -cert site.crt -key site.key -secret /vpn-4f9c
//	openconnect https://site.example:8443/vpn-4f9c
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/netstack"
	"github.com/underpass/underpass/tunnel"
)

// auditDialer is the embedding program's outbound path: it logs every flow
// a VPN client opens, then dials with next.
type auditDialer struct {
	next netstack.Dialer
	log  *slog.Logger
}

func (d auditDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := d.next.DialContext(ctx, network, address)
	d.log.Info("audit: outbound", "network", network, "address", address, "ok", err == nil)
	return c, err
}

// site is the website that was there before the VPN.
func site() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Welcome to the Example Corp website.\n")
	})
	return mux
}

// server is the HTTPS server (TCP) hosting site and VPN, and the gateway's
// own QUIC listener (UDP) for CONNECT-IP.
type server struct {
	gw    *tunnel.Gateway
	https *http.Server
}

// newServer builds the gateway into the website.
func newServer(cert *tls.Certificate, secret string, users auth.Authenticator, dialer netstack.Dialer, include []netip.Prefix, log *slog.Logger) (*server, error) {
	gw, err := tunnel.New(tunnel.Config{
		Certificate: cert, Authenticator: users, SecretPath: secret,
		Dialer: auditDialer{next: dialer, log: log}, SplitInclude: include, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	h := gw.Mount(site())
	return &server{
		gw: gw,
		https: &http.Server{
			Handler: h,
			TLSConfig: &tls.Config{
				Certificates: []tls.Certificate{*cert},
				// AnyConnect clients need one CSTP frame per TLS record and
				// HTTP/1.1 (CONNECT is hijacked).
				DynamicRecordSizingDisabled: true,
				NextProtos:                  []string{"http/1.1"},
			},
			ReadHeaderTimeout: 10 * time.Second, // slow-header clients are cut off
		},
	}, nil
}

// serve runs the website on l and CONNECT-IP on pc until Close. The
// gateway serves QUIC with its own HTTP/3 layer (CONNECT-IP only), so the
// site itself is HTTPS over TCP.
func (s *server) serve(l net.Listener, pc net.PacketConn) error {
	errc := make(chan error, 2)
	go func() { errc <- s.https.ServeTLS(l, "", "") }()
	go func() { errc <- s.gw.ServeQUIC(pc) }()
	err := <-errc
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, tunnel.ErrClosed) {
		err = nil
	}
	return err
}

// Close drains the VPN sessions, then stops both servers.
func (s *server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // drain bound for a demo
	defer cancel()
	_ = s.gw.Shutdown(ctx) // also closes the QUIC listener
	return s.https.Close()
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("embed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS (TCP) and QUIC (UDP) address")
	certFile := fs.String("cert", "", "site certificate (PEM); default: a self-signed one")
	keyFile := fs.String("key", "", "site key (PEM)")
	secret := fs.String("secret", "/vpn", "secret path of the VPN")
	user := fs.String("user", "demo", "demo user")
	pass := fs.String("password", "", "demo password (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pass == "" {
		fmt.Fprintln(stderr, "embed: -password is required")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var cert *tls.Certificate
	var err error
	if *certFile != "" {
		cert, err = certutil.LoadPEM(*certFile, *keyFile)
	} else {
		var c, k []byte
		if c, k, err = certutil.SelfSigned([]string{"localhost", "127.0.0.1"}, time.Now()); err == nil {
			var pair tls.Certificate
			pair, err = tls.X509KeyPair(c, k)
			cert = &pair
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "embed: certificate:", err)
		return 1
	}
	h, _ := bcrypt.GenerateFromPassword([]byte(*pass), bcrypt.DefaultCost)
	users, err := auth.NewStaticUsers([]auth.StaticUser{{Name: *user, Hash: string(h)}})
	if err != nil {
		fmt.Fprintln(stderr, "embed:", err)
		return 1
	}
	srv, err := newServer(cert, *secret, users, &net.Dialer{}, nil, log)
	if err != nil {
		fmt.Fprintln(stderr, "embed:", err)
		return 2
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "embed:", err)
		return 1
	}
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		fmt.Fprintln(stderr, "embed:", err)
		return 1
	}
	pin, _ := certutil.Pin(cert)
	fmt.Fprintf(stdout, "website: https://%s/\nVPN:     openconnect --servercert %s https://%s%s\n", l.Addr(), pin, l.Addr(), *secret)
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Close()
	}()
	if err := srv.serve(l, pc); err != nil {
		fmt.Fprintln(stderr, "embed:", err)
		return 1
	}
	return 0
}
