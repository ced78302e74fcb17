package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetnsPrefix starts the name of every namespace this package creates
// ("up-LABEL-XXXXXX"); scripts/netns-clean.sh removes stale ones matching
// exactly that format (keep the two in sync).
const NetnsPrefix = "up-"

// ipTimeout bounds one ip/iptables/sysctl call: they take milliseconds, so
// hitting this means a wedged system, not a slow one.
const ipTimeout = 15 * time.Second

// killGrace is how long a process (and everything left in a namespace) gets
// between SIGTERM and SIGKILL: enough for openconnect to log off and for a
// gateway to drain, short enough to keep cleanup fast.
const killGrace = 5 * time.Second

// Netns is a uniquely named Linux network namespace, removed in t.Cleanup
// together with every process still running in it.
type Netns struct {
	Name string // full name, e.g. "up-client-1a2b3c" (ip netns list)
	t    testing.TB
}

// Path is the namespace's bind mount (/run/netns/NAME).
func (n *Netns) Path() string { return "/run/netns/" + n.Name }

func (n *Netns) String() string { return n.Name }

var labelRE = regexp.MustCompile(`[^a-z0-9]+`)

// randHex returns 2*nbytes random hex digits.
func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// run runs a short administrative command (ip, iptables, sysctl) with a bounded
// time and returns its combined output in the error.
func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	path, err := LookTool(name)
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NewNetns creates a namespace named "up-<label>-<random>" with lo up. It and
// every process in it are removed in t.Cleanup.
func NewNetns(t testing.TB, label string) *Netns {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip")
	label = labelRE.ReplaceAllString(strings.ToLower(label), "")
	if len(label) > 8 {
		label = label[:8] // keep names short and readable in `ip netns list`
	}
	var name string
	var err error
	for range 5 { // a random 24-bit suffix collides ~never; 5 tries bounds the loop
		name = NetnsPrefix + label + "-" + randHex(3)
		if err = run("ip", "netns", "add", name); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: create netns: %v", err)
	}
	n := &Netns{Name: name, t: t}
	writeOwner(name)
	t.Cleanup(n.remove)
	if err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	// No IPv6 duplicate address detection: a link's addresses are final
	// when it comes up, instead of turning from tentative to valid a
	// second or two later. That late change is a network change to a
	// program already running in the namespace: Chromium aborted a page
	// load with net::ERR_NETWORK_CHANGED (TestOpenconnectSSO).
	if err := run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return n
}

// ownerDir holds one file per live namespace with its owner's "PID
// STARTTIME", so scripts/netns-clean.sh removes only namespaces whose test
// process is gone, never those of a run in progress.
const ownerDir = "/run/underpass-testenv"

func writeOwner(name string) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return
	}
	// Fields after "pid (comm) ": state is field 3, starttime field 22.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 || os.MkdirAll(ownerDir, 0o755) != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(ownerDir, name), []byte(fmt.Sprintf("%d %s\n", os.Getpid(), f[19])), 0o644)
}

// Pids lists the processes living in the namespace (never this test process,
// whose threads may visit it in Do).
func (n *Netns) Pids() []int {
	ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
	defer cancel()
	ip, err := LookTool("ip")
	if err != nil {
		return nil
	}
	out, _ := exec.CommandContext(ctx, ip, "netns", "pids", n.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil && p != os.Getpid() {
			pids = append(pids, p)
		}
	}
	return pids
}

// remove kills whatever still runs in the namespace (TERM, then KILL after
// killGrace) and deletes it.
func (n *Netns) remove() {
	if pids := n.Pids(); len(pids) > 0 {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGTERM)
		}
		deadline := time.Now().Add(killGrace)
		for len(n.Pids()) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond) // poll interval
		}
		for _, p := range n.Pids() {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	var err error
	for range 10 { // deletion can race with the last process exiting; retry ~1 s
		if err = run("ip", "netns", "del", n.Name); err == nil {
			os.Remove(filepath.Join(ownerDir, n.Name))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.t.Errorf("testenv: netns %s not removed (scripts/netns-clean.sh will): %v", n.Name, err)
}

// Link connects a and b with a veth pair, assigns the addresses and brings both
// ends up. It returns the interface names (random, <= 15 bytes, unique host-wide).
func Link(t testing.TB, a, b *Netns, aAddr, bAddr netip.Prefix) (aIf, bIf string) {
	t.Helper()
	id := randHex(4)
	aIf, bIf = "upa"+id, "upb"+id // 11 bytes: IFNAMSIZ is 16 with the NUL
	if err := run("ip", "link", "add", aIf, "netns", a.Name, "type", "veth", "peer", "name", bIf, "netns", b.Name); err != nil {
		t.Fatalf("testenv: veth: %v", err)
	}
	for _, e := range []struct {
		ns   *Netns
		ifc  string
		addr netip.Prefix
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if e.addr.IsValid() {
			if err := run("ip", "-n", e.ns.Name, "addr", "add", e.addr.String(), "dev", e.ifc); err != nil {
				t.Fatalf("testenv: %v", err)
			}
		}
		if err := run("ip", "-n", e.ns.Name, "link", "set", e.ifc, "up"); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	return aIf, bIf
}

// Run runs a short administrative command (ip, iptables, sysctl, ...) inside
// the namespace and fails the test if it fails.
func (n *Netns) Run(t testing.TB, name string, args ...string) {
	t.Helper()
	path, err := LookTool(name)
	if err != nil {
		t.Fatalf("testenv: %v; %s", err, installHint)
	}
	if err := run("ip", append([]string{"netns", "exec", n.Name, path}, args...)...); err != nil {
		t.Fatalf("testenv: in %s: %v", n.Name, err)
	}
}

// Exec returns a command that runs name inside the namespace (via `ip netns
// exec`, which execs it: the process's pid is the command's). It runs in its
// own process group, which ctx cancellation kills as a whole. PATH includes
// /usr/sbin and /sbin.
func (n *Netns) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	if p, err := LookTool(name); err == nil {
		name = p
	}
	ip, err := LookTool("ip")
	if err != nil {
		ip = "ip"
	}
	cmd := exec.CommandContext(ctx, ip, append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.Env = append(os.Environ(), pathEnv())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killGrace // don't hang on pipes a killed grandchild kept open
	return cmd
}

// Proc is a background process started with Start or StartCmd. Its stdout
// and stderr go to a log file, printed (tail) when the test fails.
type Proc struct {
	Name    string // for messages: the program's base name
	Cmd     *exec.Cmd
	LogPath string

	done    chan struct{}
	waitErr error
	stopped atomic.Bool
}

var procSeq atomic.Int64

// Start runs name in the namespace in the background; it is stopped (SIGTERM,
// then SIGKILL) in t.Cleanup.
func (n *Netns) Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	return n.StartCmd(t, n.Exec(context.Background(), name, args...))
}

// StartCmd starts a command made by Exec (set Stdin, Env, Dir first) in the
// background. Stdout and Stderr must be unset: they go to the Proc's log.
func (n *Netns) StartCmd(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	name := filepath.Base(cmd.Path)
	if len(cmd.Args) > 4 && cmd.Args[1] == "netns" && cmd.Args[2] == "exec" {
		name = filepath.Base(cmd.Args[4])
	}
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("%s-%d.log", name, procSeq.Add(1)))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("testenv: start %s in %s: %v", name, n.Name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Stop()
		if t.Failed() {
			t.Logf("testenv: %s (pid %d in %s) output, last lines:\n%s", name, p.Pid(), n.Name, p.Tail(40))
		}
	})
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its Wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Wait waits up to timeout for the process to exit and returns its exit error
// (or a timeout error, leaving the process running).
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("testenv: %s (pid %d) still running after %v", p.Name, p.Pid(), timeout)
	}
}

// Signal sends sig to the process (not its group).
func (p *Proc) Signal(sig syscall.Signal) error {
	if ok, _ := p.Exited(); ok {
		return os.ErrProcessDone
	}
	return syscall.Kill(p.Pid(), sig)
}

// Stop sends SIGTERM to the process group, SIGKILL after killGrace, and waits.
// It returns nil if the process had to be killed or exited on the signal;
// only a failure to end it is an error. Safe to call more than once.
func (p *Proc) Stop() error {
	if !p.stopped.CompareAndSwap(false, true) {
		<-p.done
		return nil
	}
	pgid := p.Pid()
	if ok, _ := p.Exited(); !ok {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(killGrace):
		}
	}
	// The leader may be gone while children it forked (ocserv workers, ocproxy)
	// remain in its group: kill the group either way.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(killGrace):
		return fmt.Errorf("testenv: %s (pid %d) survived SIGKILL", p.Name, pgid)
	}
}

// Output is everything the process wrote so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Tail is the last n lines of Output.
func (p *Proc) Tail(n int) string { return tail(p.Output(), n) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Do runs fn on an OS thread switched into the namespace, then switches the
// thread back. Sockets created by fn stay in the namespace for their whole
// life, so Do is how the test process itself listens or dials "from inside".
// fn must not start goroutines that create sockets (they run elsewhere).
func (n *Netns) Do(fn func() error) error {
	target, err := os.Open(n.Path())
	if err != nil {
		return fmt.Errorf("testenv: open netns %s: %w", n.Name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("testenv: setns %s: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := setns(orig); err != nil {
			// Leave the thread locked: the runtime discards it when this
			// goroutine exits, so no other goroutine runs in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("testenv: restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func setns(f *os.File) error {
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// Listen opens a listener inside the namespace (see net.Listen).
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) { l, err = net.Listen(network, addr); return err })
	return l, err
}

// ListenPacket opens a packet socket inside the namespace (see net.ListenPacket).
func (n *Netns) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() (err error) { c, err = net.ListenPacket(network, addr); return err })
	return c, err
}

// Dial connects from inside the namespace. addr must be a literal IP:port
// (no DNS from inside Do).
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// waitPoll is the polling interval of the Wait* helpers: fast enough to keep
// setup-time measurements honest, slow enough to cost nothing.
const waitPoll = 25 * time.Millisecond

// WaitTCP waits until a TCP connect to addr from inside the namespace
// succeeds, until ctx ends, or until one of the watched processes exits (then
// its output tail is in the error).
func (n *Netns) WaitTCP(ctx context.Context, addr string, watch ...*Proc) error {
	var last error
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second) // one attempt: a local connect
		c, err := n.Dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		for _, p := range watch {
			if ok, werr := p.Exited(); ok {
				return fmt.Errorf("testenv: %s exited (%v) before %s accepted connections; output:\n%s", p.Name, werr, addr, p.Tail(30))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s in %s not accepting connections: %w (last: %v)", addr, n.Name, ctx.Err(), last)
		case <-time.After(waitPoll):
		}
	}
}

// errNoRoute is what a connect to an unrouted address fails with.
var errNoRoute = syscall.ENETUNREACH
