package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/underpass/underpass/internal/core/dnsname"
)

// ProxySettings is the web proxy configuration pushed to clients (R-C6):
// a PAC URL or a proxy host:port, plus hosts that bypass the proxy.
//
// AnyConnect clients receive them as X-CSTP-MSIE-Proxy-* headers
// (openconnect 9 exports the PAC URL to its script as CISCO_PROXY_PAC and
// ignores the rest).
type ProxySettings struct {
	// PACURL is a proxy auto-config URL (http or https).
	PACURL string
	// Server is a proxy "host:port". At most one of PACURL and Server.
	Server string
	// Exclude lists hosts reached without the proxy: an exact name
	// (sub.contoso.com), a leading wildcard (*.contoso.com), an IPv4 or
	// IPv6 address. Inner or trailing wildcards are rejected.
	Exclude []string
}

// maxProxyExcludes bounds the exclusion list: each entry travels in the
// CONNECT response headers, and AnyConnect clients cap the list near 1 KiB
// of text anyway.
const maxProxyExcludes = 100

// IsZero reports whether no proxy is configured.
func (p ProxySettings) IsZero() bool {
	return p.PACURL == "" && p.Server == "" && len(p.Exclude) == 0
}

// validate reports every problem of p.
func (p ProxySettings) validate() []error {
	var errs fieldErrs
	if p.PACURL != "" && p.Server != "" {
		errs.add("Proxy", "set PACURL or Server, not both")
	}
	if p.PACURL != "" {
		u, err := url.Parse(p.PACURL)
		switch {
		case err != nil:
			errs.add("Proxy.PACURL", "%q: %v", p.PACURL, err)
		case u.Scheme != "http" && u.Scheme != "https":
			errs.add("Proxy.PACURL", "%q: must be an http or https URL", p.PACURL)
		case u.Host == "":
			errs.add("Proxy.PACURL", "%q: no host", p.PACURL)
		}
	}
	if p.Server != "" {
		if err := checkHostPort(p.Server); err != nil {
			errs.add("Proxy.Server", "%q: %v", p.Server, err)
		}
	}
	if len(p.Exclude) > 0 && p.PACURL == "" && p.Server == "" {
		errs.add("Proxy.Exclude", "given without PACURL or Server")
	}
	if len(p.Exclude) > maxProxyExcludes {
		errs.add("Proxy.Exclude", "%d entries, at most %d", len(p.Exclude), maxProxyExcludes)
	}
	for i, e := range p.Exclude {
		if err := checkProxyExclusion(e); err != nil {
			errs.addAt("Proxy.Exclude", i, "%q: %v", e, err)
		}
	}
	return errs
}

// checkProxyExclusion validates one proxy exclusion entry (R-C6): an exact
// FQDN, a leading "*." wildcard, or an IPv4/IPv6 address.
func checkProxyExclusion(e string) error {
	if e == "" {
		return errors.New("empty entry")
	}
	if a, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
		if a.Zone() != "" {
			return errors.New("an address with a zone is not allowed")
		}
		return nil
	}
	name := e
	if strings.HasPrefix(e, "*.") {
		name = e[2:]
	}
	if strings.Contains(name, "*") {
		return errors.New("a wildcard is allowed only as a whole leading label (*.contoso.com); inner or trailing wildcards such as con*oso.com, contos*.com or contoso.* are not")
	}
	if err := dnsname.Check(name); err != nil {
		return err
	}
	return nil
}

func checkHostPort(hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	return dnsname.Check(host)
}
