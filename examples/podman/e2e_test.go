package podman_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// The rootless Podman end-to-end test (SPEC R-O5, issue 6): as an
// unprivileged user under /home, build the FROM scratch image, run it with
// the flags of container-underpass.service (--network=host, no capabilities,
// read-only), sign in with the real openconnect (userspace, ocproxy), fetch
// the in-tunnel demo page, then `podman stop` and check the drain was clean.
//
// Everything runs in a fresh network namespace (testenv.NewNetns): podman
// inherits it, so --network=host means that namespace's loopback, and no
// port of the machine is touched.

const (
	// e2eUser is the service account the test runs Podman as; created with a
	// home under /home on first use and reused afterwards.
	e2eUser = "underpass-e2e"
	// lockFile serialises test processes on one machine: they share the
	// user, its storage and its pause process.
	lockFile = "/run/lock/underpass-podman-e2e.lock"

	// podmanTimeout bounds one podman command. The slowest is the first
	// `podman build` on fresh storage (creates it and the pause process,
	// copies a ~15 MB binary): seconds here, minutes on a loaded 2-core CI box.
	podmanTimeout = 3 * time.Minute
	// buildTimeout bounds mkcontext.sh's `go build`: a cold build of the
	// gateway (gVisor is large) takes minutes on 2 cores (testenv's figure).
	buildTimeout = 10 * time.Minute
	// depsTimeout bounds scripts/podman-deps.sh: apt-get update + ~30 MB of
	// packages from a Debian mirror.
	depsTimeout = 10 * time.Minute
	// startTimeout bounds the gateway's start inside the container: it
	// listens in well under a second; a loaded CI box may be 10x slower.
	startTimeout = 60 * time.Second
	// unitStopTimeout is the unit's `podman stop -t`: the drain must finish
	// well inside it (podman SIGKILLs after it, exit code 137).
	unitStopTimeout = 40 * time.Second
	// pauseExitTimeout bounds the rootless pause process's exit on SIGTERM
	// (catatonit exits at once).
	pauseExitTimeout = 5 * time.Second
)

// podmanTools are what the test needs, installed by scripts/podman-deps.sh
// (the Debian package, where its name differs, in the comment).
var podmanTools = []string{
	"podman",
	"newuidmap", "newgidmap", // uidmap
	"slirp4netns",
	"pasta", // passt
	"fuse-overlayfs",
	"runc",
	"catatonit",
	"openconnect", "ocproxy", "curl",
	"setpriv", "nsenter", "useradd", "ip", // util-linux, passwd, iproute2: always on Debian
}

func TestRootlessPodmanE2E(t *testing.T) {
	if testing.Short() && !testenv.InCI() {
		t.Skip("slow end-to-end test (go build, podman build, openconnect); runs without -short")
	}
	testenv.RequireRoot(t) // useradd, /run/user, network namespace
	ensureTools(t)
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	lock(t)

	// Created before anything that runs podman: its removal (kill every
	// process left in it) is the last cleanup, a backstop behind ours.
	ns := testenv.NewNetns(t, "podman")
	u := ensureUser(t)

	id := randHex(4)
	work := filepath.Join(u.home, "e2e-"+id) // readable by the user, unlike t.TempDir()
	ctxDir, etcDir := filepath.Join(work, "build"), filepath.Join(work, "etc")
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	for _, d := range []string{work, etcDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	// 1. The build context: the real static binary, by the documented script.
	bctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	if out, err := exec.CommandContext(bctx, filepath.Join(root, "examples/podman/mkcontext.sh"), ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("mkcontext.sh: %v\n%s", err, tail(string(out), 30))
	}

	// 2. Config, certificate and key as the operator would lay them out:
	// owned by the service user, key 0600 (readable in the container only
	// thanks to --userns=keep-id:uid=65532).
	cert := testenv.NewCert(t, "127.0.0.1")
	const vpnUser, vpnPass = "e2e", "podman-e2e-password"
	port := freePort(t, ns)
	image := "localhost/underpass-e2e:" + id
	name := "underpass-e2e-" + id
	volume := "underpass-e2e-state-" + id
	copyFile(t, cert.CertFile, filepath.Join(etcDir, "site.crt"), 0o644)
	copyFile(t, cert.KeyFile, filepath.Join(etcDir, "site.key"), 0o600)
	chownR(t, work, u)

	// 3. Build the image as the user.
	u.podman(t, ns, "", "build", "--layers=false", "-t", image, ctxDir)
	t.Cleanup(func() {
		_, _ = u.podmanErr(ns, "", "rmi", "-f", image)
		_, _ = u.podmanErr(ns, "", "image", "prune", "-f")
	})

	// 4. Hash the password with the image itself, as the README does.
	hash := strings.TrimSpace(u.podman(t, ns, vpnPass+"\n", "run", "--rm", "-i", "--network=none", image, "hash-password"))
	if !strings.HasPrefix(hash, "$2") {
		t.Fatalf("hash-password printed %q, want a bcrypt hash", hash)
	}
	cfg := fmt.Sprintf(`listen: "127.0.0.1:%d"
tls: {cert: /etc/underpass/site.crt, key: /etc/underpass/site.key}
pool: 169.254.0.0/16
users: [{name: %s, password_hash: "%s"}]
log: {level: info, format: json}
`, port, vpnUser, hash)
	writeFile(t, filepath.Join(etcDir, "underpass.yaml"), cfg, 0o600)
	chownR(t, etcDir, u)

	// The config check of the README: also proves keep-id lets UID 65532
	// read the user's 0600 files through the read-only bind mount.
	if out := u.podman(t, ns, "", "run", "--rm", "--network=none", "--read-only", "--userns=keep-id:uid=65532,gid=65532",
		"-v", etcDir+":/etc/underpass:ro", image, "check", "config", "/etc/underpass/underpass.yaml"); !strings.Contains(out, "OK") {
		t.Fatalf("check config in the container: %q, want OK", out)
	}

	// 5. Run it with the flags of the documented unit.
	args := runArgs(t, "container-underpass.service", map[string]string{
		"name":                       name,
		"%h/underpass/etc":           etcDir,
		"underpass-state":            volume,
		"localhost/underpass:latest": image,
	})
	u.podman(t, ns, "", args...)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := u.podmanErr(ns, "", "logs", name)
			t.Logf("container log (tail):\n%s", tail(logs, 40))
		}
		_, _ = u.podmanErr(ns, "", "rm", "-f", "-t", "0", name)
		_, _ = u.podmanErr(ns, "", "volume", "rm", "-f", volume)
	})
	server := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	sctx, scancel := context.WithTimeout(context.Background(), startTimeout)
	defer scancel()
	if err := ns.WaitTCP(sctx, server); err != nil {
		t.Fatalf("gateway in the container never listened on %s: %v\ncontainer log:\n%s", server, err, tail(u.logs(ns, name), 40))
	}
	if logs := u.logs(ns, name); !strings.Contains(logs, cert.Pin) {
		t.Errorf("the banner does not show the server certificate pin %s:\n%s", cert.Pin, tail(logs, 20))
	}

	// Rootless and unprivileged, as promised: UID 65532 inside, the service
	// user outside, no effective capability.
	top := u.podman(t, ns, "", "top", name, "user", "huser", "capeff")
	if f := strings.Fields(lastLine(top)); len(f) != 3 || f[0] != "65532" || f[1] != strconv.Itoa(u.uid) || f[2] != "none" {
		t.Errorf("podman top: want user 65532, host user %d, no capabilities; got:\n%s", u.uid, top)
	}

	// 6. The real openconnect, userspace (ocproxy), and a page through it.
	oc := testenv.Openconnect(t, ns, testenv.OCOptions{
		Server: server, ServerCertPin: cert.Pin, User: vpnUser, Password: vpnPass,
	})
	cctx, ccancel := context.WithTimeout(context.Background(), time.Minute) // curl has its own 15 s bound; this is the backstop
	defer ccancel()
	body, err := testenv.CurlViaSocks(cctx, ns, oc.SocksPort, "http://169.254.0.1/")
	if err != nil {
		t.Fatalf("fetch through the tunnel: %v\nopenconnect log (tail):\n%s\ncontainer log (tail):\n%s",
			err, tail(oc.Log(), 30), tail(u.logs(ns, name), 30))
	}
	if !strings.Contains(body, "connected as "+vpnUser) {
		t.Errorf("in-tunnel demo page = %q, want %q", body, "connected as "+vpnUser)
	}

	// 7. Stop as systemd's ExecStop does (SIGTERM) with the session still
	// up: the gateway must drain and exit 0 well before podman's SIGKILL.
	start := time.Now()
	u.podman(t, ns, "", "stop", "-t", strconv.Itoa(int(unitStopTimeout/time.Second)), name)
	took := time.Since(start)
	code := strings.TrimSpace(u.podman(t, ns, "", "inspect", "--format", "{{.State.ExitCode}}", name))
	logs := u.logs(ns, name)
	if code != "0" {
		t.Errorf("exit code after podman stop = %s, want 0 (took %v)\ncontainer log (tail):\n%s", code, took.Round(time.Millisecond), tail(logs, 30))
	}
	if !strings.Contains(logs, `"msg":"draining"`) || !strings.Contains(logs, `"msg":"stopped"`) {
		t.Errorf("container log lacks the draining/stopped records:\n%s", tail(logs, 30))
	}
	if took >= unitStopTimeout {
		t.Errorf("podman stop took %v: the drain outlived the stop timeout", took)
	}
	t.Logf("podman stop: drained and exited %s in %v", code, took.Round(time.Millisecond))
	if testing.Verbose() {
		t.Logf("container log:\n%s", tail(logs, 20))
	}
}

// ensureTools installs the Podman packages with scripts/podman-deps.sh when
// a tool is missing (root on Debian only), then requires every tool: under
// CI a missing one is fatal, never a skip.
func ensureTools(t *testing.T) {
	t.Helper()
	var miss []string
	for _, n := range podmanTools {
		if _, err := testenv.LookTool(n); err != nil {
			miss = append(miss, n)
		}
	}
	if len(miss) > 0 {
		root, err := testenv.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("missing %s: running scripts/podman-deps.sh", strings.Join(miss, ", "))
		ctx, cancel := context.WithTimeout(context.Background(), depsTimeout)
		out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts/podman-deps.sh")).CombinedOutput()
		cancel()
		if err != nil {
			t.Logf("podman-deps.sh: %v\n%s", err, out)
		}
	}
	testenv.RequireTool(t, podmanTools...)
}

// lock holds an exclusive flock on lockFile until the test ends.
func lock(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// Bounded: another run holds it at most one test's length.
	deadline := time.Now().Add(15 * time.Minute)
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			break
		} else if !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still locked by another podman e2e run after 15 minutes", lockFile)
		}
		time.Sleep(time.Second)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// podmanUser is the unprivileged account Podman runs as.
type podmanUser struct {
	name       string
	uid, gid   int
	home       string
	runtimeDir string // XDG_RUNTIME_DIR, /run/user/UID
}

// ensureUser creates (or reuses) e2eUser with a home under /home and
// subordinate IDs, its /run/user/UID, and its Podman configuration. The
// cleanup it registers stops the rootless pause process and removes the
// runtime directory if the test created it.
func ensureUser(t *testing.T) *podmanUser {
	t.Helper()
	if _, err := user.Lookup(e2eUser); err != nil {
		out, err := exec.Command("useradd", "-m", "-d", "/home/"+e2eUser, "-U",
			"-s", "/usr/sbin/nologin", "-c", "Underpass rootless Podman e2e test", e2eUser).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v\n%s", e2eUser, err, out)
		}
	}
	pw, err := user.Lookup(e2eUser)
	if err != nil {
		t.Fatal(err)
	}
	u := &podmanUser{name: e2eUser, home: pw.HomeDir}
	u.uid, _ = strconv.Atoi(pw.Uid)
	u.gid, _ = strconv.Atoi(pw.Gid)
	u.runtimeDir = fmt.Sprintf("/run/user/%d", u.uid)
	if !strings.HasPrefix(u.home, "/home/") {
		t.Fatalf("user %s exists with home %s; the test wants one under /home", e2eUser, u.home)
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b, _ := os.ReadFile(f)
		if !bytes.Contains(b, []byte("\n"+e2eUser+":")) && !bytes.HasPrefix(b, []byte(e2eUser+":")) {
			t.Fatalf("%s has no range for %s (useradd adds one when SUB_UID_COUNT/SUB_GID_COUNT > 0 in /etc/login.defs); add one: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s", f, e2eUser, e2eUser)
		}
	}

	// /run/user/UID is what logind makes at login; there is no logind here.
	created := false
	if _, err := os.Stat(u.runtimeDir); errors.Is(err, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(u.runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.runtimeDir, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(u.runtimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		u.stopPause(t)
		if created {
			_ = os.RemoveAll(u.runtimeDir)
		}
	})

	// runc: Debian 12's crun 1.8.1 fails on this cgroup v1/hybrid host.
	// overlay: native rootless overlayfs (kernel >= 5.13), far faster than
	// the vfs default Debian's Podman 4.3 falls back to.
	conf := filepath.Join(u.home, ".config/containers")
	c1 := writeIfChanged(t, filepath.Join(conf, "containers.conf"), "[engine]\nruntime = \"runc\"\n")
	c2 := writeIfChanged(t, filepath.Join(conf, "storage.conf"), "[storage]\ndriver = \"overlay\"\n")
	changed := c1 || c2
	chownR(t, filepath.Join(u.home, ".config"), u)
	if changed {
		// Storage made under another driver refuses to open: start afresh.
		if out, err := u.podmanErr(nil, "", "system", "reset", "-f"); err != nil {
			t.Logf("podman system reset: %v\n%s", err, out)
		}
	}
	return u
}

// command returns a command running podman as the user, in ns (nil: the
// test's own namespace), with a clean login-like environment.
func (u *podmanUser) command(ctx context.Context, ns *testenv.Netns, args ...string) *exec.Cmd {
	setpriv := []string{"--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--init-groups",
		"env", "-i", "HOME=" + u.home, "USER=" + u.name, "LOGNAME=" + u.name,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "XDG_RUNTIME_DIR=" + u.runtimeDir,
		"podman"}
	setpriv = append(setpriv, args...)
	cmd := exec.CommandContext(ctx, "setpriv", setpriv...)
	if ns != nil {
		// nsenter, not `ip netns exec`: the latter also remounts /sys in a
		// new mount namespace, which hides /sys/fs/cgroup, and a rootless
		// pause process started there leaves runc with "no cgroup mount
		// found in mountinfo" for every later container.
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.Path(), "setpriv"}, setpriv...)...)
	}
	cmd.Dir = u.home // podman must be able to stat its working directory
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // don't hang on pipes a killed conmon kept open
	return cmd
}

// podmanErr runs podman as the user and returns stdout, or an error carrying
// stderr's tail.
func (u *podmanUser) podmanErr(ns *testenv.Netns, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), podmanTimeout)
	defer cancel()
	cmd := u.command(ctx, ns, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s (as %s): %v\n%s", strings.Join(args, " "), u.name, err, tail(stderr.String(), 30))
	}
	return stdout.String(), nil
}

func (u *podmanUser) podman(t *testing.T, ns *testenv.Netns, stdin string, args ...string) string {
	t.Helper()
	out, err := u.podmanErr(ns, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// logs is the container's stdout and stderr (banner and slog records).
func (u *podmanUser) logs(ns *testenv.Netns, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), podmanTimeout)
	defer cancel()
	out, err := u.command(ctx, ns, "logs", name).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(podman logs %s: %v)\n%s", name, err, out)
	}
	return string(out)
}

// stopPause ends the rootless pause process (catatonit) Podman leaves
// behind, by the PID in its pause.pid, after checking the PID is still
// that user's catatonit (the netns cleanup may have killed it already and
// the PID been reused).
func (u *podmanUser) stopPause(t *testing.T) {
	pidFile := filepath.Join(u.runtimeDir, "libpod/tmp/pause.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	var st syscall.Stat_t
	if strings.TrimSpace(string(comm)) != "catatonit" || syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st) != nil || int(st.Uid) != u.uid {
		_ = os.Remove(pidFile)
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(pauseExitTimeout)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			_ = os.Remove(pidFile)
			return
		}
		time.Sleep(50 * time.Millisecond) // poll: exit takes microseconds
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	_ = os.Remove(pidFile)
	t.Logf("pause process %d ignored SIGTERM for %v; killed", pid, pauseExitTimeout)
}

// runArgs turns the documented unit's ExecStart into `podman run` arguments
// for the test: without what needs systemd (--cidfile in %t, --sdnotify) and
// without --rm (the test reads the exit code and log after the stop), with
// the container name, config directory, volume and image substituted.
func runArgs(t *testing.T, unit string, subst map[string]string) []string {
	t.Helper()
	in := execStartArgs(t, parseUnit(t, unit))
	var out []string
	for i := 0; i < len(in); i++ {
		a := in[i]
		switch {
		case strings.HasPrefix(a, "--cidfile="), a == "--sdnotify=conmon", a == "--rm":
			continue
		case a == "--name" && i+1 < len(in):
			out = append(out, a, subst["name"])
			i++
			continue
		}
		for from, to := range subst {
			if from != "name" && (a == from || strings.HasPrefix(a, from+":")) {
				a = to + strings.TrimPrefix(a, from)
			}
		}
		if strings.Contains(a, "%") {
			t.Fatalf("%s: argument %q keeps a systemd specifier the test does not substitute", unit, a)
		}
		out = append(out, a)
	}
	return out
}

func freePort(t *testing.T, ns *testenv.Netns) int {
	t.Helper()
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeFile(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b), mode)
}

// writeIfChanged writes s to path (creating its directory) unless it holds
// s already, and reports whether it wrote.
func writeIfChanged(t *testing.T, path, s string) bool {
	t.Helper()
	if b, err := os.ReadFile(path); err == nil && string(b) == s {
		return false
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, s, 0o644)
	return true
}

func chownR(t *testing.T, dir string, u *podmanUser) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.uid, u.gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func lastLine(s string) string { return tail(s, 1) }
