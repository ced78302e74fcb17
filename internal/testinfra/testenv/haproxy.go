package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// HAProxyProc is a running haproxy with its admin socket.
type HAProxyProc struct {
	*Proc
	Socket string // the stats socket (level admin), a unix socket path
}

// HAProxy starts the Debian haproxy in ns with config (a haproxy.cfg body;
// a global section with the stats socket is added before it) and waits
// until it accepts connections on listen. The config is checked first
// (haproxy -c), so a mistake fails with haproxy's own message. The process
// runs in the foreground mode (-db) and is stopped in t.Cleanup; its log
// is printed when the test fails.
func HAProxy(t testing.TB, ns *Netns, config, listen string) *HAProxyProc {
	t.Helper()
	RequireTool(t, "haproxy")
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	config = fmt.Sprintf("global\n    stats socket %s mode 600 level admin\n", sock) + config
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // haproxy -c takes milliseconds
	defer cancel()
	if out, err := ns.Exec(ctx, "haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("testenv: haproxy config rejected: %v\n%s\n--- config:\n%s", err, out, config)
	}
	p := ns.Start(t, "haproxy", "-db", "-f", path)
	if err := ns.WaitTCP(ctx, listen, p); err != nil {
		t.Fatal(err)
	}
	// The admin socket may appear just after the TCP listeners (haproxy
	// binds it under a temporary name and renames it).
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: haproxy admin socket %s never appeared; output:\n%s", sock, p.Tail(30))
		case <-time.After(waitPoll):
		}
	}
	return &HAProxyProc{Proc: p, Socket: sock}
}

// Command sends one command to the stats socket and returns the answer.
func (h *HAProxyProc) Command(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", h.Socket, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // a local socket answers in milliseconds
	if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
		return "", err
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String(), sc.Err()
}

// ServersUp returns, for each server of backend, whether its health
// checks pass (srv_op_state 2, SRV_ST_RUNNING, in `show servers state`).
func (h *HAProxyProc) ServersUp(backend string) (map[string]bool, error) {
	out, err := h.Command("show servers state " + backend)
	if err != nil {
		return nil, err
	}
	up := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// be_id be_name srv_id srv_name srv_addr srv_op_state ...
		if len(f) < 6 || strings.HasPrefix(f[0], "#") || f[1] != backend {
			continue
		}
		up[f[3]] = f[5] == "2"
	}
	if len(up) == 0 {
		return nil, fmt.Errorf("testenv: haproxy: no servers in backend %s: %q", backend, out)
	}
	return up, nil
}
