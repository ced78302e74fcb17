package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/internal/daemon/loadgen"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// loadtestResult is the part of `underpass loadtest --json` this test reads.
type loadtestResult struct {
	Mode          string
	Sessions      int
	Flows         int
	BulkBytes     int64
	Reconnected   int
	SetupTime     time.Duration
	BulkTime      time.Duration
	ReconnectTime time.Duration
	Errors        loadgen.Errors
	Interrupted   string
	Gateway       loadgen.GatewayUsage
}

// echoPort is where `underpass loadtest -echo` listens in corp.
const echoPort = 7007

// TestLoadtest runs `underpass loadtest` at CI size against a real
// `underpass serve` (both the binary, in the client and gw namespaces;
// its -echo server in corp): 200 light sessions held past the gateway's
// dead-peer time, then reconnected; 200 TLS client sessions with 10 flows each
// (2,000 flows, each echoing 4 KiB checked byte for byte, held through a
// reconnect storm and checked again) and bulk flows; 20 QUIC client
// sessions with 5 flows each; 200 light sessions signing in with an OIDC
// token (an in-process issuer in corp). Nothing may be refused, dropped,
// reset or lost.
func TestLoadtest(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ip")
	start := time.Now()
	bin := testenv.BuildBinary(t, "./examples/standalone")
	tp := testenv.Topology(t)
	cert := testenv.NewCert(t, testenv.GWAddr.String())
	hash, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost) // the run signs in 420 times with it: cheap hashing
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The token sign-ins' IdP, in corp, where the gateway finds it at start.
	il, err := tp.Corp.Listen("tcp", net.JoinHostPort(testenv.CorpAddr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	idp := testenv.NewIssuer(t, il)
	// dpd 1s (the least): the light sessions' 3 s hold outlives the
	// gateway's dead-peer time (2.5 DPD) only if they answer its DPD
	// requests.
	gw, _, _ := serveConfig(t, tp, bin, dir, fmt.Sprintf(`listen: %q
tls: {cert: %q, key: %q}
split_include: [198.19.0.0/24]
dpd: 1s
users:
  - {name: alice, password_hash: %q}
identity:
  oidc: {issuer: %q, client_id: underpass}
`, gwListen, cert.CertFile, cert.KeyFile, hash, idp.URL))
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte("alice-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(idp.Token(t, "bob", "underpass")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(testenv.CorpAddr.String(), strconv.Itoa(echoPort))
	echo := tp.Corp.Start(t, bin, "loadtest", "-echo", target)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the echo server starts in milliseconds
	defer cancel()
	if err := tp.Corp.WaitTCP(ctx, target, echo); err != nil {
		t.Fatalf("echo server did not listen: %v\n%s", err, echo.Tail(20))
	}
	t.Logf("set-up took %v", time.Since(start).Round(time.Millisecond))

	common := []string{"loadtest", "-json", "-server", gwListen, "-servercert", cert.Pin,
		"-gateway-pid", strconv.Itoa(gw.Pid()), "-duration", "50s"}
	password := []string{"-user", "alice", "-password-file", pwFile}
	for _, tc := range []struct {
		name        string
		args        []string
		sessions    int
		flows       int
		bulk        int64
		reconnected int
	}{
		{"light", append(password, "-mode", "light", "-sessions", "200", "-hold", "3s", "-reconnect"), 200, 0, 0, 200},
		{"tls", append(password, "-mode", "tls", "-sessions", "200", "-flows", "10", "-flow-bytes", "4096", "-target", target,
			"-bulk-flows", "4", "-bulk-bytes", "1048576", "-reconnect"), 200, 2000, 4 << 20, 200},
		{"quic", append(password, "-mode", "quic", "-sessions", "20", "-flows", "5", "-target", target), 20, 100, 0, 0},
		{"token", []string{"-token-file", tokenFile, "-mode", "light", "-sessions", "200"}, 200, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // -duration 50s, plus logoff
			defer cancel()
			out, err := tp.Client.Exec(ctx, bin, append(common, tc.args...)...).Output()
			var res loadtestResult
			if jerr := json.Unmarshal(out, &res); jerr != nil {
				t.Fatalf("loadtest: %v; output not JSON (%v):\n%s", err, jerr, out)
			}
			t.Logf("%s: %v; %d sessions set up in %v, %d flows, %d bulk bytes in %v, %d back after the storm in %v; gateway RSS %d MiB held (from %s)",
				tc.name, time.Since(began).Round(time.Millisecond), res.Sessions, res.SetupTime.Round(time.Millisecond), res.Flows,
				res.BulkBytes, res.BulkTime.Round(time.Millisecond), res.Reconnected, res.ReconnectTime.Round(time.Millisecond),
				res.Gateway.RSSHeld>>20, res.Gateway.Source)
			if err != nil {
				t.Errorf("loadtest exited with %v", err)
			}
			if res.Errors != (loadgen.Errors{}) || res.Interrupted != "" {
				t.Errorf("errors %+v, interrupted %q", res.Errors, res.Interrupted)
			}
			if res.Sessions != tc.sessions || res.Flows != tc.flows || res.BulkBytes != tc.bulk || res.Reconnected != tc.reconnected {
				t.Errorf("sessions %d, flows %d, bulk bytes %d, reconnected %d; want %d, %d, %d, %d",
					res.Sessions, res.Flows, res.BulkBytes, res.Reconnected, tc.sessions, tc.flows, tc.bulk, tc.reconnected)
			}
			if res.Gateway.RSSHeld == 0 {
				t.Errorf("the gateway's RSS was not read: %+v", res.Gateway)
			}
		})
	}
	t.Logf("TestLoadtest took %v", time.Since(start).Round(time.Millisecond))
}
