package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/underpass/underpass/internal/certutil"
	"github.com/underpass/underpass/internal/config"
	"github.com/underpass/underpass/internal/outbound"
)

// checkTimeout bounds each readiness probe.
const checkTimeout = 5 * time.Second

// checkCert applies the R-T2 rules to a certificate and prints errors and
// warnings; exit 0 when there are no errors.
func checkCert(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check cert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", "", "take the certificate, site host and extra roots from this config")
	certFile := fs.String("cert", "", "certificate chain (PEM)")
	keyFile := fs.String("key", "", "private key (PEM)")
	pfx := fs.String("pfx", "", "PKCS#12 file")
	pwFile := fs.String("password-file", "", "file holding the PFX password")
	host := fs.String("host", "", "public name or address clients dial (must be in the SANs)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	src := certutil.Source{CertFile: *certFile, KeyFile: *keyFile, PFXFile: *pfx}
	rootsDir := ""
	if *cfgFile != "" {
		cfg, err := config.Load(*cfgFile)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitConfig
		}
		if cfg.CertSource == (certutil.Source{}) {
			fmt.Fprintln(stderr, "underpass: the config names no certificate (a self-signed one is generated)")
			return exitConfig
		}
		src, rootsDir = cfg.CertSource, cfg.ExtraRootsDir
		if *host == "" {
			*host = cfg.Site.Host
		}
	} else if *pwFile != "" {
		var err error
		if src.PFXPassword, err = certutil.ReadPasswordFile(*pwFile); err != nil {
			fmt.Fprintln(stderr, "underpass:", err)
			return exitUsage
		}
	}
	if src.PFXFile == "" && (src.CertFile == "" || src.KeyFile == "") {
		fmt.Fprintln(stderr, "underpass: check cert needs -config, --cert and --key, or --pfx")
		return exitUsage
	}
	c, err := src.Load()
	if err != nil {
		fmt.Fprintln(stdout, "error:", err)
		return exitFail
	}
	roots, err := outbound.Roots(rootsDir)
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitConfig
	}
	r := certutil.Check(c, *host, roots, time.Now())
	leaf, _ := certutil.Leaf(c)
	pin, _ := certutil.Pin(c)
	fmt.Fprintf(stdout, "certificate: %s, valid until %s, %s\n", leaf.Subject.CommonName, leaf.NotAfter.Format(time.DateOnly), pin)
	for _, e := range r.Errors {
		fmt.Fprintln(stdout, "error:", e)
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	if !r.OK() {
		return exitFail
	}
	fmt.Fprintln(stdout, "OK")
	return exitOK
}

// checkNetwork is the readiness check before a start (R-O1): the ports are
// free to bind, the DNS servers answer, the check URL and the IdP's
// discovery document are reachable.
func checkNetwork(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check network", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", "", "config file (required)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *cfgFile == "" {
		fmt.Fprintln(stderr, "underpass: check network needs -config FILE")
		return exitUsage
	}
	cfg, err := config.Load(*cfgFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	failed := false
	report := func(what string, err error) {
		if err != nil {
			failed = true
			fmt.Fprintf(stdout, "FAIL  %s: %v\n", what, err)
			return
		}
		fmt.Fprintf(stdout, "ok    %s\n", what)
	}
	addr := listenAddr(cfg.Tunnel.ListenAddr)
	if l, err := net.Listen("tcp", addr); err != nil {
		report("TCP "+addr+" bindable", err)
	} else {
		l.Close()
		report("TCP "+addr+" bindable", nil)
	}
	if !cfg.Tunnel.DisableUDP {
		if pc, err := net.ListenPacket("udp", addr); err != nil {
			report("UDP "+addr+" bindable (QUIC)", err)
		} else {
			pc.Close()
			report("UDP "+addr+" bindable (QUIC)", nil)
		}
	}
	upstreams := cfg.Tunnel.DNSProxy.Upstreams
	if len(upstreams) == 0 {
		for _, a := range cfg.Tunnel.DNS {
			upstreams = append(upstreams, netip.AddrPortFrom(a, 53).String())
		}
	}
	name := "."
	if len(cfg.Tunnel.SearchDomains) > 0 {
		name = dns.Fqdn(cfg.Tunnel.SearchDomains[0])
	}
	for _, u := range upstreams {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeSOA)
		c := &dns.Client{Timeout: checkTimeout}
		r, _, err := c.Exchange(m, u)
		if err == nil && r.Rcode == dns.RcodeServerFailure {
			err = fmt.Errorf("SERVFAIL for %s", name)
		}
		report("DNS server "+u+" answers ("+name+" SOA)", err)
	}
	hc, err := outbound.Client(cfg.ExtraRootsDir)
	if err != nil {
		report("extra roots", err)
		hc = &http.Client{Timeout: checkTimeout}
	}
	get := func(what, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err == nil {
			var resp *http.Response
			if resp, err = hc.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode >= 400 {
					err = fmt.Errorf("%s", resp.Status)
				}
			}
		}
		report(what+" "+url, err)
	}
	if cfg.Site.CheckURL != "" {
		get("check URL", cfg.Site.CheckURL)
	}
	if f := cfg.IdentityFile; f != nil && f.OIDC != nil {
		get("IdP discovery", strings.TrimSuffix(f.OIDC.Issuer, "/")+"/.well-known/openid-configuration")
	}
	if failed {
		return exitFail
	}
	return exitOK
}
