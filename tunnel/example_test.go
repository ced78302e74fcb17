package tunnel_test

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/tunnel"
)

// A gateway for one lab user that routes 10.0.0.0/8 through the tunnel and
// serves a page on its own in-tunnel address.
func Example() {
	certPEM, keyPEM, err := certutil.SelfSigned([]string{"vpn.example"}, time.Now())
	if err != nil {
		log.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		log.Fatal(err)
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("correct horse"), bcrypt.MinCost)
	users, err := auth.NewStaticUsers([]auth.StaticUser{{Name: "alice", Hash: string(hash)}})
	if err != nil {
		log.Fatal(err)
	}

	gw, err := tunnel.New(tunnel.Config{
		Certificate:   &cert,
		Authenticator: users,
		DNS:           []netip.Addr{netip.MustParseAddr("10.0.0.53")},
		SearchDomains: []string{"corp.example"},
		SplitInclude:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		log.Fatal(err) // a *tunnel.ConfigError lists every problem
	}
	defer gw.Close()

	// A web page for connected clients at http://169.254.0.1/.
	web, err := gw.Listen("tcp", ":80")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from inside the tunnel")
	}))

	l, err := net.Listen("tcp", "127.0.0.1:0") // ":443" in production
	if err != nil {
		log.Fatal(err)
	}
	go gw.Serve(l) // returns tunnel.ErrClosed after Close

	fmt.Println("gateway's tunnel address:", gw.Addr())
	// Output: gateway's tunnel address: 169.254.0.1
}

// Invalid configurations are reported all at once.
func ExampleConfig_Validate() {
	err := tunnel.Config{
		MTU:          100,
		SplitInclude: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
	}.Validate()
	fmt.Println(err)
	// Output:
	// tunnel: invalid config (4 problems):
	//   - Authenticator: required
	//   - MTU: 100 out of range [1280, 16376]
	//   - SplitInclude[0] 0.0.0.0/0: network address 0.0.0.0 covers the default route: for a full tunnel use no include rules
	//   - pool 169.254.0.0/16: client address pool overlaps include[0] 0.0.0.0/0
}
