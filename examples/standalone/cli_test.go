package main

import (
	"encoding/json"
	"flag"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/underpass/underpass/tunnel"
)

// runCLI runs the command line args with empty stdin and returns its
// exit code, stdout and stderr.
func runCLI(args ...string) (int, string, string) {
	var out, errb strings.Builder
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// hermetic points the default admin socket and the state directory into
// a temporary directory, so that a command line the CLI wrongly accepts
// can reach neither a server running on this machine nor the user's files.
func hermetic(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	t.Setenv("XDG_CONFIG_HOME", dir)
}

// invocationOf returns a command line that runs c with its fewest
// positional arguments, extra appended.
func invocationOf(c *command, extra ...string) []string {
	args := append(strings.Fields(c.name), placeholders(c)...)
	return append(args, extra...)
}

// placeholders returns as many arguments as c needs at least.
func placeholders(c *command) []string {
	return slices.Repeat([]string{"x"}, c.minArgs)
}

// TestCommandFlags: each command's flag set holds exactly the flags it
// takes, and the table holds every command.
func TestCommandFlags(t *testing.T) {
	admin := []string{"admin-socket"}
	adminJSON := []string{"admin-socket", "json"}
	want := map[string][]string{
		"serve":         {"admin-socket", "config", "listen", "v"},
		"check config":  nil,
		"check cert":    {"cert", "config", "host", "key", "password-file", "pfx"},
		"check network": {"config"},
		"hash-password": {"cost"},
		"status":        {"admin-socket", "json", "site"},
		"bans lift":     adminJSON,
		"show users":    adminJSON,
		"show sessions": {"admin-socket", "json", "site"},
		"show bans":     adminJSON,
		"show events":   adminJSON,
		"show session":  adminJSON,
		"disconnect":    admin,
		"import-cert":   {"admin-socket", "cert", "delay", "json", "key", "password-file", "pfx"},
		"server stop":   {"admin-socket", "timeout"},
		"site push":     {"config", "revision", "timeout", "wait"},
		"site pull":     {"config"},
		"loadtest": {"bulk-bytes", "bulk-flows", "concurrency", "duration", "echo", "failover", "flow-bytes", "flows", "gateway-pid", "hold", "json",
			"metrics", "mode", "password-file", "rate", "reconnect", "server", "servercert", "sessions", "setup-timeout", "target", "token-file", "user", "v"},
		"help": nil,
	}
	for _, c := range commands {
		fs, _ := c.flags()
		var got []string
		fs.VisitAll(func(f *flag.Flag) { got = append(got, f.Name) })
		w, ok := want[c.name]
		if !ok {
			t.Errorf("%s: not in this test's table", c.name)
			continue
		}
		delete(want, c.name)
		if !slices.Equal(got, w) {
			t.Errorf("%s: flags %v, want %v", c.name, got, w)
		}
	}
	for name := range want {
		t.Errorf("%s: not in the command table", name)
	}
}

// TestUnknownFlag: every command refuses a flag it does not take, wherever
// it stands, naming itself and the flag, with its usage; nothing on stdout.
func TestUnknownFlag(t *testing.T) {
	hermetic(t)
	for _, c := range commands {
		words := strings.Fields(c.name)
		lines := [][]string{
			invocationOf(c, "--bogus"),
			// Before the arguments, and before the subcommand word of a group.
			append(append([]string{words[0], "--bogus"}, words[1:]...), placeholders(c)...),
		}
		for _, args := range lines {
			code, out, errOut := runCLI(args...)
			wantErr := "underpass " + c.name + ": flag provided but not defined: -bogus\nusage: underpass " + c.synopsis + "\n"
			if code != exitUsage || out != "" || !strings.HasPrefix(errOut, wantErr) {
				t.Errorf("%q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, exitUsage, out, errOut)
			}
		}
	}
}

// TestUsageErrors: wrong arguments, unknown subcommands and bad flag
// values are usage errors (exit 2) that say what is wrong, on stderr.
func TestUsageErrors(t *testing.T) {
	hermetic(t)
	for _, tc := range []struct {
		args   []string
		stderr string // the first line
	}{
		{[]string{"show", "sessions", "--pfx", "x"}, "underpass show sessions: flag provided but not defined: -pfx"},
		{[]string{"show", "session"}, "underpass show session: missing ID"},
		{[]string{"show", "session", "a", "b"}, `underpass show session: unexpected argument "b"`},
		{[]string{"show", "session", "--json"}, "underpass show session: missing ID"},
		{[]string{"show", "sessions", "extra"}, `underpass show sessions: unexpected argument "extra"`},
		{[]string{"disconnect"}, "underpass disconnect: missing ID"},
		{[]string{"disconnect", "id", "--json"}, "underpass disconnect: flag provided but not defined: -json"},
		{[]string{"check", "config"}, "underpass check config: missing FILE"},
		{[]string{"check", "config", "a.yaml", "b.yaml"}, `underpass check config: unexpected argument "b.yaml"`},
		{[]string{"check", "config", "-config", "a.yaml"}, "underpass check config: flag provided but not defined: -config"},
		{[]string{"check", "network"}, "underpass check network: needs -config FILE"},
		{[]string{"check", "cert"}, "underpass check cert: needs -config, --cert and --key, or --pfx"},
		{[]string{"import-cert", "--cert", "c.pem"}, "underpass import-cert: needs --cert and --key, or --pfx"},
		{[]string{"status", "now"}, `underpass status: unexpected argument "now"`},
		{[]string{"serve", "-config", "no-such.yaml", "extra"}, `underpass serve: unexpected argument "extra"`},
		{[]string{"server", "stop", "--timeout", "soon"}, `underpass server stop: invalid value "soon" for flag -timeout: parse error`},
		{[]string{"server", "stop", "--timeout"}, "underpass server stop: flag needs an argument: -timeout"},
		{[]string{"hash-password", "-cost", "40"}, "underpass hash-password: cost 40 out of range 4..31"},
		{[]string{"show"}, "underpass show: missing subcommand"},
		{[]string{"show", "--json"}, "underpass show: missing subcommand"},
		{[]string{"show", "nonsense"}, `underpass show: unknown subcommand "nonsense"`},
		{[]string{"show", "nonsense", "sessions"}, `underpass show: unknown subcommand "nonsense"`},
		{[]string{"show", "-admin-socket", "s.sock", "--json", "nonsense"}, `underpass show: unknown subcommand "nonsense"`},
		{[]string{"check"}, "underpass check: missing subcommand"},
		{[]string{"server", "start"}, `underpass server: unknown subcommand "start"`},
		{[]string{"help", "bogus"}, `underpass help: unknown command "bogus"`},
		{[]string{"help", "show", "bogus"}, `underpass help: unknown command "show bogus"`},
		{[]string{"help", "show", "session", "ID"}, `underpass help: unexpected argument "ID"`},
	} {
		code, out, errOut := runCLI(tc.args...)
		first, rest, _ := strings.Cut(errOut, "\n")
		if code != exitUsage || out != "" || first != tc.stderr || !strings.HasPrefix(rest, "usage:") {
			t.Errorf("%q: exit %d, want %d\nstdout: %s\nstderr: %s", tc.args, code, exitUsage, out, errOut)
		}
	}
}

// TestHelp: `help CMD` and `CMD -h` print the command's synopsis, summary
// and flags to stdout and exit 0.
func TestHelp(t *testing.T) {
	hermetic(t)
	for _, c := range commands {
		fs, _ := c.flags()
		for _, args := range [][]string{
			append([]string{"help"}, strings.Fields(c.name)...),
			invocationOf(c, "-h"),
			append(strings.Fields(c.name), "--help"),
		} {
			code, out, errOut := runCLI(args...)
			if code != exitOK || errOut != "" || !strings.HasPrefix(out, "usage: underpass "+c.synopsis+"\n\n"+c.summary+"\n") {
				t.Errorf("%q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
				continue
			}
			fs.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(out, "  -"+f.Name+" ") && !strings.Contains(out, "  -"+f.Name+"\t") && !strings.Contains(out, "  -"+f.Name+"\n") {
					t.Errorf("%q: flag -%s not listed\n%s", args, f.Name, out)
				}
			})
		}
	}
	code, out, _ := runCLI("help", "server", "stop")
	if code != exitOK || !strings.Contains(out, "drain_delay (default 10s)") {
		t.Errorf("help server stop shows no default: %d\n%s", code, out)
	}
}

// TestOverview: `help`, -h and --help list every command; so does a
// missing command, on stderr with exit 2. `help GROUP` lists the group.
func TestOverview(t *testing.T) {
	hermetic(t)
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, nil} {
		code, out, errOut := runCLI(args...)
		text, want := out, exitOK
		if args == nil {
			text, want = errOut, exitUsage
		}
		if code != want {
			t.Errorf("%q: exit %d, want %d", args, code, want)
		}
		for _, c := range commands {
			if !strings.Contains(text, "\n  underpass "+c.synopsis+"\n") {
				t.Errorf("%q: no %q in\n%s", args, c.synopsis, text)
			}
		}
		if !strings.Contains(text, "4 server not running") {
			t.Errorf("%q: no exit codes in\n%s", args, text)
		}
	}
	for _, args := range [][]string{{"help", "show"}, {"show", "-h"}} {
		code, out, errOut := runCLI(args...)
		if code != exitOK || errOut != "" || !strings.Contains(out, "underpass show session ID [--json]\n") ||
			!strings.Contains(out, "underpass show events [--json]\n") || strings.Contains(out, "status") {
			t.Errorf("%q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
		}
	}
}

// adminStub answers the admin API on a Unix socket as a running server
// would, for a session "s1" of alice, and records the requests.
type adminStub struct {
	sock string
	mu   sync.Mutex
	reqs []string // "METHOD /path?query"
}

// newAdminStub serves the stub on a socket in a temporary directory until
// the test ends.
func newAdminStub(t *testing.T) *adminStub {
	s := &adminStub{sock: filepath.Join(t.TempDir(), "admin.sock")}
	l, err := net.Listen("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	s1 := tunnel.SessionInfo{ID: "s1", User: "alice"}
	mux := http.NewServeMux()
	answer := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { _ = json.NewEncoder(w).Encode(v) }
	}
	mux.Handle("GET /v1/sessions", answer([]tunnel.SessionInfo{s1}))
	mux.Handle("GET /v1/sessions/s1", answer(s1))
	mux.Handle("POST /v1/sessions/{id}/disconnect", answer(struct{}{}))
	mux.Handle("POST /v1/stop", answer(struct{}{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "no session here"})
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Method+" "+r.URL.RequestURI())
		s.mu.Unlock()
		mux.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

// take returns the requests recorded since the last take.
func (s *adminStub) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.reqs
	s.reqs = nil
	return r
}

// TestFlagPlacement: the operator commands take their flags before, between
// and after the words, as before, and send the request the words ask for.
func TestFlagPlacement(t *testing.T) {
	stub := newAdminStub(t)
	sock := stub.sock
	for _, tc := range []struct {
		args   []string
		code   int
		req    string // the one request sent; "" for none
		stdout string // substring
	}{
		{[]string{"show", "session", "s1", "--json", "-admin-socket", sock}, exitOK, "GET /v1/sessions/s1", `"ID": "s1"`},
		{[]string{"show", "-admin-socket", sock, "--json", "sessions"}, exitOK, "GET /v1/sessions", `"User": "alice"`},
		{[]string{"show", "sessions", "-admin-socket=" + sock}, exitOK, "GET /v1/sessions", "s1  alice"},
		{[]string{"show", "-admin-socket", "sessions", "session", "s1"}, exitNotRunning, "", ""}, // the socket is named "sessions"
		{[]string{"show", "session", "-admin-socket", sock, "nope"}, exitNotFound, "GET /v1/sessions/nope", ""},
		{[]string{"disconnect", "s1", "-admin-socket", sock}, exitOK, "POST /v1/sessions/s1/disconnect", "session s1 disconnected"},
		{[]string{"disconnect", "-admin-socket", sock, "--", "-odd"}, exitOK, "POST /v1/sessions/-odd/disconnect", "session -odd disconnected"},
		{[]string{"server", "-admin-socket", sock, "stop", "--timeout", "5s"}, exitOK, "POST /v1/stop?timeout=5s", "draining (up to 5s)"},
		{[]string{"server", "stop", "-admin-socket", sock}, exitOK, "POST /v1/stop?timeout=10s", "draining (up to 10s)"},
		{[]string{"show", "sessions", "--json", "extra", "-admin-socket", sock}, exitUsage, "", ""},
		{[]string{"import-cert", "-admin-socket", sock}, exitUsage, "", ""},
	} {
		code, out, errOut := runCLI(tc.args...)
		reqs := stub.take()
		wantReqs := []string{tc.req}
		if tc.req == "" {
			wantReqs = nil
		}
		if code != tc.code || !slices.Equal(reqs, wantReqs) || !strings.Contains(out, tc.stdout) {
			t.Errorf("%q: exit %d (want %d), requests %q (want %q)\nstdout: %s\nstderr: %s", tc.args, code, tc.code, reqs, wantReqs, out, errOut)
		}
	}
}
