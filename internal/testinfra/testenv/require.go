package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// installHint is appended to every "missing prerequisite" message.
const installHint = "run scripts/deps.sh (or `make test`) to install the test tools"

// sbinDirs are searched in addition to PATH: ip, iptables and openconnect live
// in /usr/sbin, which a non-login root shell or CI runner may not have in PATH.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// InCI reports whether the tests run under CI (CI=true), where a missing
// prerequisite is always a failure, never a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1" || v == "yes"
}

// LookTool finds an executable in PATH or in the sbin directories and returns
// its absolute path.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
}

// pathEnv is PATH plus the sbin directories, for the processes we start (the
// vpnc-script calls ip, openconnect runs the script through /bin/sh).
func pathEnv() string {
	p := os.Getenv("PATH")
	if p == "" {
		p = "/usr/local/bin:/usr/bin:/bin"
	}
	for _, d := range sbinDirs {
		if !strings.Contains(":"+p+":", ":"+d+":") {
			p += ":" + d
		}
	}
	return "PATH=" + p
}

// missing reports a missing prerequisite: Fatal under CI, Skip with -short
// outside CI, Fatal otherwise (a full local run must not silently test less).
func missing(t testing.TB, what, hint string) {
	t.Helper()
	switch {
	case InCI():
		t.Fatalf("%s (CI=true: missing prerequisites are fatal); %s", what, hint)
	case testing.Short():
		t.Skipf("%s; %s", what, hint)
	default:
		t.Fatalf("%s; %s (or use -short to skip)", what, hint)
	}
}

// RequireTool checks that every named executable is installed (PATH, /usr/sbin, /sbin).
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	var miss []string
	for _, n := range names {
		if _, err := LookTool(n); err != nil {
			miss = append(miss, n)
		}
	}
	if len(miss) > 0 {
		missing(t, "missing tools: "+strings.Join(miss, ", "), installHint)
	}
}

// RequireRoot checks that the test runs as root (namespaces, veth, tun, iptables need it).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "test needs root (network namespaces, veth, tun)", "run as root, e.g. `sudo -E make test`")
	}
}
