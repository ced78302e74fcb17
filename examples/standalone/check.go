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

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/outbound"
)

// checkTimeout bounds each readiness probe.
const checkTimeout = 5 * time.Second

// checkConfigCommand binds the flags of `underpass check config FILE` (none).
func checkConfigCommand(*flag.FlagSet) runFunc {
	return func(inv *invocation) int {
		file := inv.args[0]
		if _, err := config.Load(file); err != nil {
			fmt.Fprintln(inv.stderr, err)
			return exitConfig
		}
		fmt.Fprintf(inv.stdout, "%s: OK\n", file)
		return exitOK
	}
}

// checkCertFlags are the flags of `underpass check cert`.
type checkCertFlags struct {
	config string // take the certificate, host and roots from this config
	host   string // the name clients dial
	certFlags
}

// checkCertCommand binds the flags of `underpass check cert`.
func checkCertCommand(fs *flag.FlagSet) runFunc {
	f := &checkCertFlags{}
	fs.StringVar(&f.config, "config", "", "take the certificate, site host and extra roots from this config")
	f.certFlags.bind(fs)
	fs.StringVar(&f.host, "host", "", "public name or address clients dial (must be in the SANs)")
	return func(inv *invocation) int { return checkCert(f, inv) }
}

// checkCert applies the R-T2 rules to a certificate and prints errors and
// warnings; exit 0 when there are no errors.
func checkCert(f *checkCertFlags, inv *invocation) int {
	stdout, stderr := inv.stdout, inv.stderr
	src := certutil.Source{CertFile: f.cert, KeyFile: f.key, PFXFile: f.pfx}
	host, rootsDir := f.host, ""
	if f.config != "" {
		cfg, err := config.Load(f.config)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitConfig
		}
		if cfg.CertSource == (certutil.Source{}) {
			fmt.Fprintln(stderr, "underpass: the config names no certificate (a self-signed one is generated)")
			return exitConfig
		}
		src, rootsDir = cfg.CertSource, cfg.ExtraRootsDir
		if host == "" {
			host = cfg.Site.Host
		}
	} else if f.passwordFile != "" {
		var err error
		if src.PFXPassword, err = certutil.ReadPasswordFile(f.passwordFile); err != nil {
			fmt.Fprintln(stderr, "underpass:", err)
			return exitUsage
		}
	}
	if src.PFXFile == "" && (src.CertFile == "" || src.KeyFile == "") {
		return inv.usageError("needs -config, --cert and --key, or --pfx")
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
	r := certutil.Check(c, host, roots, time.Now())
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

// checkNetworkCommand binds the flags of `underpass check network`.
func checkNetworkCommand(fs *flag.FlagSet) runFunc {
	cfgFile := fs.String("config", "", "config file (required)")
	return func(inv *invocation) int {
		if *cfgFile == "" {
			return inv.usageError("needs -config FILE")
		}
		return checkNetwork(*cfgFile, inv.stdout, inv.stderr)
	}
}

// probes prints the outcome of readiness probes, one line each, and
// remembers whether any failed.
type probes struct {
	w      io.Writer
	failed bool
}

// report prints what was probed and how it went.
func (p *probes) report(what string, err error) {
	if err != nil {
		p.failed = true
		fmt.Fprintf(p.w, "FAIL  %s: %v\n", what, err)
		return
	}
	fmt.Fprintf(p.w, "ok    %s\n", what)
}

// checkNetwork is the readiness check before a start (R-O1): the ports are
// free to bind, the DNS servers answer, the check URL and the IdP's
// discovery document are reachable.
func checkNetwork(cfgFile string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(cfgFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	p := &probes{w: stdout}
	p.bind(cfg)
	p.dns(cfg)
	hc, err := outbound.Client(cfg.ExtraRootsDir)
	if err != nil {
		p.report("extra roots", err)
		hc = &http.Client{Timeout: checkTimeout}
	}
	if cfg.Site.CheckURL != "" {
		p.get(hc, "check URL", cfg.Site.CheckURL)
	}
	if f := cfg.IdentityFile; f != nil && f.OIDC != nil {
		p.get(hc, "IdP discovery", strings.TrimSuffix(f.OIDC.Issuer, "/")+"/.well-known/openid-configuration")
	}
	if p.failed {
		return exitFail
	}
	return exitOK
}

// bind probes that the listen address is free on TCP, and on UDP unless
// disable_udp.
func (p *probes) bind(cfg *config.Config) {
	addr := listenAddr(cfg.Tunnel.ListenAddr)
	if l, err := net.Listen("tcp", addr); err != nil {
		p.report("TCP "+addr+" bindable", err)
	} else {
		l.Close()
		p.report("TCP "+addr+" bindable", nil)
	}
	if !cfg.Tunnel.DisableUDP {
		if pc, err := net.ListenPacket("udp", addr); err != nil {
			p.report("UDP "+addr+" bindable (QUIC)", err)
		} else {
			pc.Close()
			p.report("UDP "+addr+" bindable (QUIC)", nil)
		}
	}
}

// dns probes that every upstream DNS server (the DNS proxy's, else the
// pushed DNS servers) answers an SOA query for the first search domain,
// else the root.
func (p *probes) dns(cfg *config.Config) {
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
		p.report("DNS server "+u+" answers ("+name+" SOA)", err)
	}
}

// get probes that url answers a GET with hc, with a status below 400.
func (p *probes) get(hc *http.Client, what, url string) {
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
	p.report(what+" "+url, err)
}
