package testenv

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// etcdStartTimeout bounds an etcd start: a single member with an empty or
// small data dir elects itself in about a second.
const etcdStartTimeout = 20 * time.Second

// Etcd is an etcd member (Debian's etcd-server) on loopback with a data
// directory in the test's temp dir: a single-member cluster (StartEtcd) or
// one of a cluster's (StartEtcdCluster). Stop and Start restart it with
// the same data and ports, for outage tests.
type Etcd struct {
	Endpoint string // the client URL, http://127.0.0.1:PORT

	t       testing.TB
	name    string
	cluster string // --initial-cluster: name=peerURL of every member
	dir     string
	peerURL string
	proc    *Proc
	tlsArgs []string     // StartEtcdTLS: etcd's TLS flags
	hc      *http.Client // the health check's client (nil: http.DefaultClient)
}

// host names the host's own network namespace in process messages.
var host = &Netns{Name: "host"}

// StartEtcd starts etcd on two free loopback ports and waits until it
// reports itself healthy. It is stopped in t.Cleanup. Under CI=true a
// missing etcd is a failure.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	return StartEtcdCluster(t, 1)[0]
}

// StartEtcdCluster starts an n-member etcd cluster on loopback (members
// m1..mn) and waits until every member reports itself healthy, which
// needs an elected leader. Each member is stopped in t.Cleanup.
func StartEtcdCluster(t testing.TB, n int) []*Etcd {
	t.Helper()
	RequireTool(t, "etcd")
	members := make([]*Etcd, n)
	var cluster []string
	for i := range members {
		e := &Etcd{t: t, name: fmt.Sprintf("m%d", i+1), dir: t.TempDir()}
		e.Endpoint = "http://" + freeLoopbackPort(t)
		e.peerURL = "http://" + freeLoopbackPort(t)
		cluster = append(cluster, e.name+"="+e.peerURL)
		members[i] = e
	}
	for _, e := range members {
		e.cluster = strings.Join(cluster, ",")
		e.start() // all first: a member of a cluster is healthy only once a quorum has formed
	}
	for _, e := range members {
		e.waitHealthy()
	}
	return members
}

func freeLoopbackPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start starts the member (again) and waits until /health says true (for
// a cluster's member: until it has a leader again).
func (e *Etcd) Start() {
	e.t.Helper()
	e.start()
	e.waitHealthy()
}

func (e *Etcd) start() {
	e.t.Helper()
	path, err := LookTool("etcd")
	if err != nil {
		e.t.Fatalf("testenv: %v; %s", err, installHint)
	}
	cmd := exec.Command(path,
		"--name", e.name, "--data-dir", e.dir,
		"--listen-client-urls", e.Endpoint, "--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", e.peerURL, "--initial-advertise-peer-urls", e.peerURL,
		"--initial-cluster", e.cluster, "--initial-cluster-state", "new",
		"--logger", "zap", "--log-outputs", "stderr")
	cmd.Args = append(cmd.Args, e.tlsArgs...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	e.proc = host.StartCmd(e.t, cmd)
}

func (e *Etcd) waitHealthy() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), etcdStartTimeout)
	defer cancel()
	var last error
	for {
		if last = e.healthy(ctx); last == nil {
			return
		}
		if ok, werr := e.proc.Exited(); ok {
			e.t.Fatalf("testenv: etcd exited (%v); output:\n%s", werr, e.proc.Tail(30))
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("testenv: etcd not healthy after %v: %v; output:\n%s", etcdStartTimeout, last, e.proc.Tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (e *Etcd) healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second) // a local GET
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.Endpoint+"/health", nil)
	if err != nil {
		return err
	}
	req.Close = true // no idle connection (and its goroutines) left behind
	hc := e.hc
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"health":"true"`) {
		return fmt.Errorf("etcd /health: %s %s", resp.Status, b)
	}
	return nil
}

// Stop stops the member (SIGTERM, then SIGKILL) and waits for it to exit;
// its data stays for the next Start.
func (e *Etcd) Stop() {
	e.t.Helper()
	if err := e.proc.Stop(); err != nil {
		e.t.Fatal(err)
	}
}
