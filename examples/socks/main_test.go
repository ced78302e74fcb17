package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/gwtest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// quic-go's UDP reader and timers end asynchronously after Close.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// TestCurlThroughTunnel: curl reaches a corporate web server through the
// SOCKS5 and HTTP proxies, over QUIC and over TLS.
func TestCurlThroughTunnel(t *testing.T) {
	testenv.RequireTool(t, "curl")
	curl, _ := testenv.LookTool("curl")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "corporate page") }))
	defer web.Close()
	gw := gwtest.Start(t, nil)
	target := "http://" + gwtest.Corp(netip.MustParseAddrPort(web.Listener.Addr().String())).String() + "/"

	for _, transport := range []string{"quic", "tls"} {
		t.Run(transport, func(t *testing.T) {
			pr, pw := io.Pipe()
			stop := make(chan struct{})
			code := make(chan int, 1)
			var stderr strings.Builder
			go func() {
				code <- run([]string{"-server", gw.Addr, "-user", gwtest.User, "-password-file", "-",
					"-servercert", gw.Pin, "-transport", transport, "-listen", "127.0.0.1:0"},
					strings.NewReader(gwtest.Password+"\n"), pw, &stderr, stop)
				pw.Close()
			}()
			line, err := bufio.NewReader(pr).ReadString('\n')
			if err != nil {
				t.Fatalf("no banner: %v; stderr: %s", err, stderr.String())
			}
			go io.Copy(io.Discard, pr)
			if !strings.Contains(line, "over "+transport) {
				t.Errorf("banner %q", line)
			}
			addr := line[strings.LastIndex(line, " ")+1 : len(line)-1]
			if _, _, err := net.SplitHostPort(addr); err != nil {
				t.Fatalf("banner %q: %v", line, err)
			}
			for _, args := range [][]string{{"--socks5-hostname", addr}, {"--proxy", "http://" + addr, "--proxytunnel"}} {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "10"}, append(args, target)...)...).CombinedOutput()
				cancel()
				if err != nil || !strings.Contains(string(out), "corporate page") {
					t.Errorf("curl %v: %v: %s", args, err, out)
				}
			}
			close(stop)
			if c := <-code; c != 0 {
				t.Errorf("exit %d: %s", c, stderr.String())
			}
		})
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-transport", "carrier-pigeon", "-server", "x", "-user", "u"},
		{"-cert", "a.pem", "-server", "x"},
		{"-server", "x"}, // no credentials: a ConfigError from tunnel.Dial
		{"-nonsense"},
	} {
		var stderr strings.Builder
		if c := run(args, strings.NewReader(""), io.Discard, &stderr, nil); c != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, c, stderr.String())
		}
		if stderr.Len() == 0 {
			t.Errorf("%v: no message", args)
		}
	}
}
