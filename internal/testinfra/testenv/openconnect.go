package testenv

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Openconnect client modes.
const (
	// ModeOcproxy is fully userspace: --script-tun with ocproxy as a SOCKS5
	// proxy on 127.0.0.1:SocksPort in the client namespace.
	ModeOcproxy = "ocproxy"
	// ModeTun is a kernel tun device in the client namespace, configured by
	// our minimal vpnc-script (address, MTU, split-include routes).
	ModeTun = "tun"
)

// DefaultOCTimeout bounds connecting: TLS + XML auth + CONNECT + script take
// well under a second, but a race-built gateway on a loaded 2-core CI box can
// be 10x slower.
const DefaultOCTimeout = 30 * time.Second

//go:embed vpnc-script.sh
var vpncScript []byte

//go:embed ocproxy-wrap.sh
var ocproxyWrap []byte

// OCOptions configures one openconnect run.
type OCOptions struct {
	Server        string // "host:port" of the gateway
	Path          string // URL path and query, default "/" (e.g. "/?secret")
	ServerCertPin string // "pin-sha256:..." (--servercert)
	User          string
	Password      string // fed on stdin (--passwd-on-stdin)
	Cookie        string // if set: --cookie-on-stdin instead of User/Password
	Mode          string // ModeOcproxy (default) or ModeTun
	DTLS          bool   // allow DTLS; default is --no-dtls (TLS/CSTP only)
	ExtraArgs     []string
	Env           []string      // extra environment (NAME=value), e.g. for an --external-browser program
	Timeout       time.Duration // to get connected; DefaultOCTimeout if 0
}

func (o *OCOptions) url() string {
	p := o.Path
	if p == "" {
		p = "/"
	}
	return "https://" + o.Server + p
}

// baseArgs are the arguments every openconnect run shares.
func (o *OCOptions) baseArgs() []string {
	a := []string{"--non-inter", "-v", "--servercert", o.ServerCertPin}
	if o.Cookie != "" {
		a = append(a, "--cookie-on-stdin")
	} else {
		a = append(a, "--user", o.User, "--passwd-on-stdin")
	}
	if !o.DTLS {
		a = append(a, "--no-dtls")
	}
	return a
}

func (o *OCOptions) stdin() string {
	if o.Cookie != "" {
		return o.Cookie + "\n"
	}
	return o.Password + "\n"
}

// OCSession is a running openconnect client.
type OCSession struct {
	Proc      *Proc
	NS        *Netns
	Mode      string
	Interface string // tun mode: the tun device's name in NS
	SocksPort int    // ocproxy mode: SOCKS5 port on 127.0.0.1 in NS
	dump      string // the script's environment dump
}

// Openconnect starts openconnect in ns and waits until the tunnel is up: the
// vpnc-script finished configuring the tun device (tun mode), or ocproxy
// accepts on its SOCKS port (ocproxy mode). A failure to connect is fatal and
// shows the tail of openconnect's log. The client logs off in t.Cleanup.
func Openconnect(t testing.TB, ns *Netns, opts OCOptions) *OCSession {
	t.Helper()
	s, err := TryOpenconnect(t, ns, opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return s
}

// TryOpenconnect is Openconnect returning the error instead (for tests that
// expect the connection to fail; openconnect has then exited).
func TryOpenconnect(t testing.TB, ns *Netns, opts OCOptions) (*OCSession, error) {
	t.Helper()
	RequireTool(t, "openconnect", "ip")
	if opts.Mode == "" {
		opts.Mode = ModeOcproxy
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultOCTimeout
	}
	dir := t.TempDir()
	s := &OCSession{NS: ns, Mode: opts.Mode, dump: filepath.Join(dir, "env")}
	args := opts.baseArgs()
	switch opts.Mode {
	case ModeTun:
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			missing(t, "/dev/net/tun missing (openconnect tun mode)", "load the tun module or use ModeOcproxy")
		}
		script := filepath.Join(dir, "vpnc-script.sh")
		if err := os.WriteFile(script, vpncScript, 0o755); err != nil {
			t.Fatal(err)
		}
		s.Interface = "uptun" + randHex(3) // 11 bytes < IFNAMSIZ
		args = append(args, "--interface", s.Interface, "--script", shQuote(script))
	case ModeOcproxy:
		RequireTool(t, "ocproxy")
		wrap := filepath.Join(dir, "ocproxy-wrap.sh")
		if err := os.WriteFile(wrap, ocproxyWrap, 0o755); err != nil {
			t.Fatal(err)
		}
		port, err := freePort(ns)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		s.SocksPort = port
		args = append(args, "--script-tun", "--script", shQuote(wrap)+" -D "+strconv.Itoa(port))
	default:
		t.Fatalf("testenv: OCOptions.Mode %q: want %q or %q", opts.Mode, ModeOcproxy, ModeTun)
	}
	args = append(args, opts.ExtraArgs...)
	args = append(args, opts.url())

	cmd := ns.Exec(context.Background(), "openconnect", args...)
	cmd.Stdin = strings.NewReader(opts.stdin())
	cmd.Env = append(append(cmd.Env, opts.Env...), "TESTENV_DUMP="+s.dump)
	s.Proc = ns.StartCmd(t, cmd)
	t.Cleanup(func() { _ = s.Close() })

	if err := s.waitUp(opts.Timeout); err != nil {
		_ = s.Proc.Stop()
		return nil, fmt.Errorf("testenv: openconnect to %s (%s mode) in %s: %v\nopenconnect log (tail):\n%s",
			opts.Server, opts.Mode, ns.Name, err, s.Proc.Tail(40))
	}
	return s, nil
}

// waitUp polls until the tunnel is usable, openconnect exits, or timeout.
func (s *OCSession) waitUp(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok, err := s.Proc.Exited(); ok {
			return fmt.Errorf("openconnect exited before connecting (%v)", err)
		}
		if b, err := os.ReadFile(s.dump + ".errors"); err == nil && len(b) > 0 {
			return fmt.Errorf("vpnc-script failed: %s", bytes.TrimSpace(b))
		}
		if _, err := os.Stat(s.dump); err == nil {
			if s.Mode == ModeTun {
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second) // local connect
			c, err := s.NS.Dial(ctx, "tcp", s.socksAddr())
			cancel()
			if err == nil {
				c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not connected after %v", timeout)
		}
		time.Sleep(waitPoll)
	}
}

func (s *OCSession) socksAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.SocksPort))
}

// Env is the environment openconnect gave the script at the last
// connect/reconnect: INTERNAL_IP4_ADDRESS, INTERNAL_IP4_MTU, INTERNAL_IP4_DNS,
// CISCO_SPLIT_INC_*, CISCO_DEF_DOMAIN, CISCO_BANNER, CISCO_CSTP_OPTIONS, ...
// (ocproxy mode: what ocproxy received).
func (s *OCSession) Env() map[string]string { return readEnvDump(s.dump) }

// ScriptEnv is the environment of the script's last run with reason
// ("pre-init", "connect", "disconnect", "reconnect", "attempt-reconnect");
// nil if it never ran with it. Tun mode only.
func (s *OCSession) ScriptEnv(reason string) map[string]string {
	return readEnvDump(s.dump + "." + reason)
}

// ScriptReasons lists the script's invocations in order (tun mode:
// "pre-init", "connect", ...; ocproxy mode: one entry per ocproxy start).
func (s *OCSession) ScriptReasons() []string {
	b, _ := os.ReadFile(s.dump + ".reasons")
	return strings.Fields(string(b))
}

func readEnvDump(path string) map[string]string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	m := make(map[string]string)
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// Log is openconnect's output so far (-v).
func (s *OCSession) Log() string { return s.Proc.Output() }

// Done is closed when openconnect has exited (e.g. the gateway ended the session).
func (s *OCSession) Done() <-chan struct{} { return s.Proc.Done() }

// ocExitTimeout bounds openconnect's exit after a signal: it sends the
// DISCONNECT frame and runs the script, which takes milliseconds.
const ocExitTimeout = 10 * time.Second

// Close logs the session off (SIGINT: openconnect sends DISCONNECT reason 0xB0,
// the gateway should drop the cookie) and waits for openconnect to exit.
// Safe to call more than once.
func (s *OCSession) Close() error { return s.signalExit(syscall.SIGINT) }

// CloseKeepSession disconnects without logging off (SIGHUP): the cookie stays
// valid on the gateway for a later run with OCOptions.Cookie.
func (s *OCSession) CloseKeepSession() error { return s.signalExit(syscall.SIGHUP) }

func (s *OCSession) signalExit(sig syscall.Signal) error {
	if ok, _ := s.Proc.Exited(); ok {
		return nil
	}
	if err := s.Proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if err := s.Proc.Wait(ocExitTimeout); err != nil && !isExitErr(err) {
		_ = s.Proc.Stop()
		return fmt.Errorf("testenv: openconnect did not exit on %v: %w", sig, err)
	}
	return s.Proc.Stop() // ocproxy and anything else left in the process group
}

// Reconnect makes openconnect drop the connection and reconnect at once with
// its cookie (SIGUSR2). In tun mode the script then runs with reason
// "reconnect" (see WaitScriptReason).
func (s *OCSession) Reconnect() error { return s.Proc.Signal(syscall.SIGUSR2) }

// WaitScriptReason waits until the script has run with reason at least count
// times in total (tun mode; e.g. "reconnect", "disconnect"), until openconnect
// exits, or until timeout.
func (s *OCSession) WaitScriptReason(reason string, count int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n := 0
		for _, r := range s.ScriptReasons() {
			if r == reason {
				n++
			}
		}
		if n >= count {
			return nil
		}
		if ok, err := s.Proc.Exited(); ok {
			return fmt.Errorf("testenv: openconnect exited (%v) after %d of %d %q script runs; log:\n%s", err, n, count, reason, s.Proc.Tail(30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: %d of %d %q script runs after %v; reasons so far %v", n, count, reason, timeout, s.ScriptReasons())
		}
		time.Sleep(waitPoll)
	}
}

func isExitErr(err error) bool {
	var ee interface{ ExitCode() int }
	return errors.As(err, &ee)
}

// AuthResult is what `openconnect --authenticate` prints.
type AuthResult struct {
	Cookie      string // COOKIE: the webvpn session cookie
	Host        string // HOST
	ConnectURL  string // CONNECT_URL
	Fingerprint string // FINGERPRINT: the server cert pin openconnect saw
	Resolve     string // RESOLVE
}

// Authenticate runs `openconnect --authenticate` (sign in, print the cookie,
// exit without connecting) in ns and returns the session cookie.
func Authenticate(t testing.TB, ns *Netns, opts OCOptions) (cookie string, err error) {
	t.Helper()
	r, err := AuthenticateFull(t, ns, opts)
	if err != nil {
		return "", err
	}
	return r.Cookie, nil
}

// AuthenticateFull is Authenticate returning every variable openconnect printed.
func AuthenticateFull(t testing.TB, ns *Netns, opts OCOptions) (*AuthResult, error) {
	t.Helper()
	RequireTool(t, "openconnect")
	if opts.Timeout == 0 {
		opts.Timeout = DefaultOCTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	args := append(opts.baseArgs(), "--authenticate")
	args = append(args, opts.ExtraArgs...)
	cmd := ns.Exec(ctx, "openconnect", append(args, opts.url())...)
	cmd.Env = append(cmd.Env, opts.Env...)
	cmd.Stdin = strings.NewReader(opts.stdin())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("testenv: openconnect --authenticate: %v\n%s", err, tail(stderr.String(), 30))
	}
	vars := parseShellAssignments(stdout.String())
	r := &AuthResult{Cookie: vars["COOKIE"], Host: vars["HOST"], ConnectURL: vars["CONNECT_URL"],
		Fingerprint: vars["FINGERPRINT"], Resolve: vars["RESOLVE"]}
	if r.Cookie == "" {
		return nil, fmt.Errorf("testenv: openconnect --authenticate printed no COOKIE:\n%s\n%s", stdout.String(), tail(stderr.String(), 30))
	}
	return r, nil
}

// parseShellAssignments parses openconnect's NAME=value lines, where value
// uses shell single quotes (a literal quote is backslash-escaped between them).
func parseShellAssignments(s string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		var b strings.Builder
		for len(v) > 0 {
			switch {
			case v[0] == '\'':
				end := strings.IndexByte(v[1:], '\'')
				if end < 0 {
					b.WriteString(v[1:])
					v = ""
					continue
				}
				b.WriteString(v[1 : 1+end])
				v = v[2+end:]
			case v[0] == '\\' && len(v) > 1:
				b.WriteByte(v[1])
				v = v[2:]
			default:
				b.WriteByte(v[0])
				v = v[1:]
			}
		}
		m[k] = b.String()
	}
	return m
}

// shQuote quotes s for /bin/sh (openconnect runs --script through sh -c).
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// freePort returns a TCP port free on 127.0.0.1 in ns (bind to :0, close).
func freePort(ns *Netns) (int, error) {
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// curlMaxTime bounds a single curl: every test fetch is small and local; a
// hung tunnel should fail the test in seconds, not minutes.
const curlMaxTime = 15

// curlBackstop kills curl if ctx has no deadline and extra arguments raised
// --max-time: generous for big downloads, but bounded.
const curlBackstop = 5 * time.Minute

// withoutProxyEnv drops the host's proxy settings: test traffic is local.
func withoutProxyEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Curl fetches url with curl inside ns (-sS --fail, --max-time 15, then extra
// arguments, which may override) and returns the body. The error carries
// curl's exit status and stderr.
func Curl(ctx context.Context, ns *Netns, url string, extra ...string) (body string, err error) {
	args := []string{"-sS", "--fail", "--max-time", strconv.Itoa(curlMaxTime), "--connect-timeout", "5"}
	args = append(args, extra...)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, curlBackstop)
		defer cancel()
	}
	cmd := ns.Exec(ctx, "curl", append(args, url)...)
	cmd.Env = withoutProxyEnv(cmd.Env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("curl %s in %s: %v: %s", url, ns.Name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// CurlViaSocks fetches url through the SOCKS5 proxy on 127.0.0.1:socksPort in
// ns (ocproxy), letting the proxy resolve host names (through the VPN's DNS).
func CurlViaSocks(ctx context.Context, ns *Netns, socksPort int, url string, extra ...string) (body string, err error) {
	return Curl(ctx, ns, url, append([]string{"--socks5-hostname", "127.0.0.1:" + strconv.Itoa(socksPort)}, extra...)...)
}
