package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/underpass/underpass/internal/daemon/loadgen"
)

// loadtestFlags are the flags of `underpass loadtest`.
type loadtestFlags struct {
	cfg          loadgen.Config
	mode         string
	passwordFile string
	tokenFile    string
	pid          int
	metrics      string
	echo         string
	json         bool
	verbose      bool
}

// loadtestCommand binds the flags of `underpass loadtest`.
func loadtestCommand(fs *flag.FlagSet) runFunc {
	f := &loadtestFlags{}
	c := &f.cfg
	fs.StringVar(&c.Server, "server", "", "the gateway: host:port or https://host:port/path")
	fs.StringVar(&c.PinSHA256, "servercert", "", "accept only the gateway certificate with this pin-sha256:BASE64 (as openconnect --servercert); default: the system roots")
	fs.StringVar(&c.Username, "user", "", "user every session signs in as")
	fs.StringVar(&f.passwordFile, "password-file", "", `file whose first line is the password ("-": stdin)`)
	fs.StringVar(&f.tokenFile, "token-file", "", `instead of -user: file whose first line is an OIDC token every session signs in with ("-": stdin)`)
	fs.StringVar(&f.mode, "mode", string(loadgen.ModeLight), "light (AnyConnect over TLS, no IP stack), tls or quic (the Go client with its stack; these carry flows)")
	fs.IntVar(&c.Sessions, "sessions", loadgen.DefaultSessions, "sessions to hold")
	fs.Float64Var(&c.Rate, "rate", 0, "new sessions per second at most (0: as fast as -concurrency allows)")
	fs.IntVar(&c.Concurrency, "concurrency", loadgen.DefaultConcurrency, "setups, flow openings and reconnects in flight at most")
	fs.DurationVar(&c.SetupTimeout, "setup-timeout", loadgen.DefaultSetupTimeout, "bound on one session's setup, reconnect or flow")
	fs.StringVar(&c.Target, "target", "", "echo server host:port reached through the tunnel, for flows (see -echo)")
	fs.IntVar(&c.Flows, "flows", 0, "flows each session opens, echoes -flow-bytes on, and holds")
	fs.IntVar(&c.FlowBytes, "flow-bytes", loadgen.DefaultFlowBytes, "bytes each held flow sends and checks come back")
	fs.IntVar(&c.BulkFlows, "bulk-flows", 0, "flows that echo -bulk-bytes at once, for throughput")
	fs.Int64Var(&c.BulkBytes, "bulk-bytes", 64<<20, "bytes each bulk flow sends and checks come back")
	fs.DurationVar(&c.Hold, "hold", 0, "keep everything up this long after setup (the gateway's idle cost)")
	fs.BoolVar(&c.Reconnect, "reconnect", false, "after the hold, drop every connection at once and reconnect all with their cookies")
	fs.BoolVar(&c.Failover, "failover", false, "light sessions whose connection is lost during the hold (their server died) come back with their cookies; reports the time (the reconnect storm behind a balancer)")
	fs.DurationVar(&c.Duration, "duration", loadgen.DefaultDuration, "bound on the whole run")
	fs.IntVar(&f.pid, "gateway-pid", 0, "read the gateway's RSS and CPU from /proc/PID (a gateway on this machine)")
	fs.StringVar(&f.metrics, "metrics", "", "read the gateway's RSS and CPU from its /metrics URL (admin_http)")
	fs.StringVar(&f.echo, "echo", "", "serve the flows' echo target on this host:port until interrupted, instead of a load run")
	fs.BoolVar(&f.json, "json", false, "print the result as JSON")
	fs.BoolVar(&f.verbose, "v", false, "log progress and each failure on stderr")
	return func(inv *invocation) int { return f.run(inv) }
}

func (f *loadtestFlags) run(inv *invocation) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if f.echo != "" {
		return serveEcho(ctx, inv, f.echo, slog.New(slog.NewTextHandler(inv.stderr, nil)))
	}
	c := &f.cfg
	c.Mode = loadgen.Mode(f.mode)
	if f.verbose {
		c.Logger = slog.New(slog.NewTextHandler(inv.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		// A dependency writing through the standard log package would
		// bury the summary under hundreds of sessions' lines (connect-ip-go
		// did, issue 14). -v keeps them.
		log.SetOutput(io.Discard)
	}
	switch {
	case c.Server == "":
		return inv.usageError("-server is required (or -echo ADDR)")
	case (c.Username == "") == (f.tokenFile == ""):
		return inv.usageError("give -user NAME with -password-file F, or -token-file F")
	case c.Username != "" && f.passwordFile == "":
		return inv.usageError("-password-file is required with -user")
	case f.pid != 0 && f.metrics != "":
		return inv.usageError("-gateway-pid and -metrics: give one")
	}
	secret, field := f.passwordFile, &c.Password
	if f.tokenFile != "" {
		secret, field = f.tokenFile, &c.Token
	}
	v, err := readPasswordFile(secret, inv.stdin)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass loadtest:", err)
		return exitUsage
	}
	*field = v
	switch {
	case f.pid != 0:
		c.Gateway = loadgen.ProcProbe{PID: f.pid}
	case f.metrics != "":
		c.Gateway = loadgen.MetricsProbe{URL: f.metrics}
	}
	res, err := loadgen.Run(ctx, *c)
	var ce *loadgen.ConfigError
	if errors.As(err, &ce) {
		return inv.usageError("%s", flagSpelling(ce))
	}
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass loadtest:", err)
		return exitFail
	}
	if f.json {
		e := json.NewEncoder(inv.stdout)
		e.SetIndent("", "  ")
		_ = e.Encode(jsonResult(res))
	} else {
		loadgen.WriteSummary(inv.stdout, res)
	}
	if res.Errors.Total() > 0 || res.Interrupted != nil {
		return exitFail
	}
	return exitOK
}

// flagSpelling names a Config problem by its flag, not its Go field.
func flagSpelling(ce *loadgen.ConfigError) string {
	flags := map[string]string{"Server": "-server", "PinSHA256": "-servercert", "Username": "-user", "Token": "-token-file", "Mode": "-mode",
		"Sessions": "-sessions", "Rate": "-rate", "Concurrency": "-concurrency", "Flows": "-flows", "FlowBytes": "-flow-bytes",
		"Target": "-target", "BulkFlows": "-bulk-flows", "BulkBytes": "-bulk-bytes", "Reconnect": "-reconnect", "Failover": "-failover"}
	name, ok := flags[ce.Field]
	if !ok {
		name = ce.Field
	}
	return name + ": " + ce.Reason
}

// jsonResult is the result with its derived rates, for --json.
func jsonResult(r *loadgen.Result) any {
	interrupted := ""
	if r.Interrupted != nil {
		interrupted = r.Interrupted.Error()
	}
	return struct {
		*loadgen.Result
		Interrupted   string  `json:"Interrupted,omitempty"`
		SetupRate     float64 // sessions per second
		Mbps          float64 // bulk throughput each way, Mbit/s
		ReconnectRate float64 // sessions back per second in the storm
	}{r, interrupted, r.SetupRate(), r.Mbps(), r.ReconnectRate()}
}

// readPasswordFile returns the first line of the file ("-": stdin): a
// password or a token.
func readPasswordFile(name string, stdin io.Reader) (string, error) {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("%s: empty first line", name)
	}
	return line, nil
}

// serveEcho serves the flows' echo target until ctx ends.
func serveEcho(ctx context.Context, inv *invocation, addr string, log *slog.Logger) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass loadtest:", err)
		return exitFail
	}
	fmt.Fprintf(inv.stdout, "echo server listening on %s\n", l.Addr())
	if err := loadgen.ServeEcho(ctx, l, log); err != nil {
		fmt.Fprintln(inv.stderr, "underpass loadtest:", err)
		return exitFail
	}
	return exitOK
}
