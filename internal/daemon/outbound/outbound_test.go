package outbound

import (
	"bufio"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestExtraRootsAndProxy: a server with a private CA is trusted only with
// the roots directory, and requests go through the configured proxy.
func TestExtraRootsAndProxy(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "idp") }))
	defer srv.Close()
	dir := t.TempDir()

	plain, err := Client("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Get(srv.URL); err == nil {
		t.Fatal("a private CA was trusted without the roots directory")
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	os.WriteFile(filepath.Join(dir, "inspecting-proxy-ca.pem"), ca, 0o644)
	c, err := Client(dir)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatalf("with the roots directory: %v", err)
	}
	resp.Body.Close()

	// An HTTP CONNECT proxy that counts tunnels; https_proxy points at it.
	var tunnels atomic.Int32
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	defer pl.Close()
	go func() {
		for {
			cn, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer cn.Close()
				req, err := http.ReadRequest(bufio.NewReader(cn))
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				// Every name is the test server (no DNS here).
				_, port, _ := net.SplitHostPort(req.Host)
				up, err := net.Dial("tcp", "127.0.0.1:"+port)
				if err != nil {
					return
				}
				defer up.Close()
				tunnels.Add(1)
				io.WriteString(cn, "HTTP/1.1 200 OK\r\n\r\n")
				go io.Copy(up, cn)
				io.Copy(cn, up)
			}()
		}
	}()
	t.Setenv("HTTPS_PROXY", "http://"+pl.Addr().String())
	t.Setenv("NO_PROXY", "")
	c, _ = Client(dir)
	// httptest serves on 127.0.0.1, which ProxyFromEnvironment never
	// proxies; reach it by a name instead.
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	resp, err = c.Get("https://example.com:" + port)
	if err == nil {
		resp.Body.Close()
	}
	if tunnels.Load() != 1 {
		t.Errorf("proxy saw %d tunnels, want 1 (err %v)", tunnels.Load(), err)
	}

	os.WriteFile(filepath.Join(dir, "typo.pem"), []byte("not a cert"), 0o644)
	if _, err := Client(dir); err == nil || !strings.Contains(err.Error(), "typo.pem") {
		t.Errorf("bad roots file: %v", err)
	}
}
