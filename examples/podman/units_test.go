package podman_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// unitFile is a parsed systemd/quadlet unit: section -> key -> values in
// order (keys such as Volume= repeat).
type unitFile map[string]map[string][]string

// parseUnit reads the systemd unit syntax: [Section] headers, Key=Value
// lines, '#'/';' comments, backslash-newline continuations (joined with a
// space, as systemd does).
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	var cont strings.Builder
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cont.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont.WriteString(strings.TrimSuffix(line, `\`))
			cont.WriteString(" ")
			continue
		}
		if cont.Len() > 0 {
			cont.WriteString(line)
			line = cont.String()
			cont.Reset()
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not a Key=Value line in a section: %q", path, n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u[section][k] = append(u[section][k], v)
	}
	if cont.Len() > 0 {
		t.Fatalf("%s: ends inside a continuation line", path)
	}
	return u
}

// one returns the single value of section.key, failing if absent or repeated.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: want exactly one value, have %q", section, key, v)
	}
	return v[0]
}

func (u unitFile) want(t *testing.T, section, key, value string) {
	t.Helper()
	if got := u.one(t, section, key); got != value {
		t.Errorf("[%s] %s=%s, want %s", section, key, got, value)
	}
}

// quadlet44ContainerKeys is every [Container] key Podman 4.4.0's quadlet
// accepts (pkg/systemd/quadlet/quadlet.go at v4.4.0); it rejects any other,
// so the example must stay within them to work on the oldest quadlet.
var quadlet44ContainerKeys = []string{
	"ContainerName", "Image", "Environment", "EnvironmentFile", "EnvironmentHost",
	"Exec", "NoNewPrivileges", "DropCapability", "AddCapability", "ReadOnly",
	"RemapUsers", "RemapUid", "RemapGid", "RemapUidSize", "Notify", "ExposeHostPort",
	"PublishPort", "User", "Group", "Volume", "PodmanArgs", "Label", "Annotation",
	"RunInit", "VolatileTmp", "Timezone", "SeccompProfile", "AddDevice", "Network",
}

// Flags both the quadlet and the generated unit must give `podman run`: the
// R-O5 hardening and what the README promises.
var requiredRunFlags = []string{
	"--network=host",
	"--cap-drop=all",
	"--read-only",
	"--userns=keep-id:uid=65532,gid=65532",
}

// execStartArgs splits a unit's ExecStart into arguments (our units use no
// quoting) and drops the program.
func execStartArgs(t *testing.T, u unitFile) []string {
	t.Helper()
	f := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(f) < 2 || f[0] != "/usr/bin/podman" || f[1] != "run" {
		t.Fatalf("ExecStart does not start with /usr/bin/podman run: %q", f)
	}
	return f[1:]
}

func TestContainerfile(t *testing.T) {
	b, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	var instr []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			instr = append(instr, l)
		}
	}
	var froms []string
	for _, l := range instr {
		kw, _, _ := strings.Cut(l, " ")
		switch strings.ToUpper(kw) {
		case "FROM":
			froms = append(froms, l)
		case "RUN":
			t.Errorf("RUN in a FROM scratch image (no shell to run it): %q", l)
		case "ADD":
			t.Errorf("ADD fetches/extracts implicitly; use COPY: %q", l)
		}
	}
	if !slices.Equal(froms, []string{"FROM scratch"}) {
		t.Errorf("want exactly one stage FROM scratch (nothing to pull), have %q", froms)
	}
	for _, want := range []string{
		"USER 65532:65532",
		"STOPSIGNAL SIGTERM",
		"EXPOSE 443/tcp 443/udp",
		`ENTRYPOINT ["/underpass"]`,
		`CMD ["serve", "-config", "/etc/underpass/underpass.yaml"]`,
		`VOLUME ["/var/lib/underpass"]`,
		"COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
	} {
		if !slices.Contains(instr, want) {
			t.Errorf("Containerfile lacks %q", want)
		}
	}
	if !strings.Contains(string(b), "XDG_CONFIG_HOME=/var/lib/underpass") {
		t.Error("Containerfile does not point XDG_CONFIG_HOME at the state volume")
	}
}

func TestQuadlet(t *testing.T) {
	q := parseUnit(t, "underpass.container")
	for k := range q["Container"] {
		if !slices.Contains(quadlet44ContainerKeys, k) {
			t.Errorf("[Container] %s: not a Podman 4.4 quadlet key (quadlet 4.4 refuses the file)", k)
		}
	}
	q.want(t, "Container", "Image", "localhost/underpass:latest")
	q.want(t, "Container", "Network", "host")
	q.want(t, "Container", "DropCapability", "all")
	q.want(t, "Container", "NoNewPrivileges", "true")
	q.want(t, "Container", "ReadOnly", "true")
	q.want(t, "Container", "Label", "io.containers.autoupdate=local")
	q.want(t, "Install", "WantedBy", "default.target")
	args := strings.Fields(q.one(t, "Container", "PodmanArgs"))
	if !slices.Contains(args, "--userns=keep-id:uid=65532,gid=65532") {
		t.Errorf("PodmanArgs %q lacks the keep-id mapping", args)
	}

	// The quadlet and the generated unit describe the same container.
	s := parseUnit(t, "container-underpass.service")
	run := strings.Join(execStartArgs(t, s), " ")
	for _, v := range q["Container"]["Volume"] {
		if !strings.Contains(run, "-v "+v) {
			t.Errorf("quadlet Volume=%s is not in container-underpass.service", v)
		}
	}
	for _, a := range args {
		a = strings.Replace(a, "--stop-timeout=", "--stop-timeout ", 1)
		if !strings.Contains(run, a) {
			t.Errorf("quadlet PodmanArgs %s is not in container-underpass.service", a)
		}
	}
	if !strings.Contains(run, "--label "+q.one(t, "Container", "Label")) {
		t.Error("quadlet and container-underpass.service disagree on the auto-update label")
	}

	// Podman >= 4.4 ships the generator: let it judge the file too.
	gen := "/usr/libexec/podman/quadlet"
	if _, err := os.Stat(gen); err != nil {
		t.Logf("%s not installed (Podman < 4.4): checked the keys against the 4.4 list only", gen)
		return
	}
	dir := t.TempDir()
	src, _ := os.ReadFile("underpass.container")
	if err := os.WriteFile(filepath.Join(dir, "underpass.container"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a file transform: milliseconds
	defer cancel()
	cmd := exec.CommandContext(ctx, gen, "-dryrun", "-user")
	cmd.Env = append(os.Environ(), "QUADLET_UNIT_DIRS="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("---underpass.service---")) {
		t.Errorf("quadlet -dryrun: %v\n%s", err, out)
	}
}

func TestGeneratedUnit(t *testing.T) {
	s := parseUnit(t, "container-underpass.service")
	args := execStartArgs(t, s)
	joined := " " + strings.Join(args, " ") + " "
	for _, f := range append(requiredRunFlags, "--security-opt no-new-privileges",
		"--label io.containers.autoupdate=local", "-d", "--rm", "--replace", "--sdnotify=conmon") {
		if !strings.Contains(joined, " "+f+" ") {
			t.Errorf("ExecStart lacks %q:\n%s", f, joined)
		}
	}
	if args[len(args)-1] != "localhost/underpass:latest" {
		t.Errorf("ExecStart image = %q, want localhost/underpass:latest (the image CMD runs the config)", args[len(args)-1])
	}
	s.want(t, "Service", "Environment", "PODMAN_SYSTEMD_UNIT=%n") // podman auto-update restarts through it
	s.want(t, "Service", "Type", "notify")
	s.want(t, "Install", "WantedBy", "default.target")
}

func TestUpdateTimer(t *testing.T) {
	tm := parseUnit(t, "underpass-update.timer")
	tm.want(t, "Timer", "OnCalendar", "Sun *-*-* 03:00:00")
	tm.want(t, "Timer", "RandomizedDelaySec", "30min")
	tm.want(t, "Timer", "Persistent", "false") // never catch up outside the window
	tm.want(t, "Install", "WantedBy", "timers.target")
	sv := parseUnit(t, "underpass-update.service") // the timer's default unit: same name
	sv.want(t, "Service", "Type", "oneshot")
	sv.want(t, "Service", "ExecStart", "/usr/bin/podman auto-update")
}

// TestSystemdVerify has systemd itself check the unit files (syntax, known
// keys, calendar expressions, executables). It needs systemd-analyze and,
// for the ExecStart checks, /usr/bin/podman.
func TestSystemdVerify(t *testing.T) {
	testenv.RequireTool(t, "systemd-analyze", "podman")
	dir := t.TempDir()
	rt := filepath.Join(dir, "runtime") // --user wants a runtime dir; no user manager needed
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	units := []string{"container-underpass.service", "underpass-update.service", "underpass-update.timer"}
	for _, f := range units {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range units {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // loads one unit: well under a second
		cmd := exec.CommandContext(ctx, "systemd-analyze", "verify", "--user", "--man=no", filepath.Join(dir, f))
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
		out, err := cmd.CombinedOutput()
		cancel()
		// Unknown keys and bad values are only warnings: any output is a failure.
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", f, err, out)
		}
	}
}
