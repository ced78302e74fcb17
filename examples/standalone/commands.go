package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// command is one subcommand of the underpass command line. Each has its
// own flag.FlagSet with only the flags it takes.
type command struct {
	name     string // the words that select it: "serve", "show session"
	synopsis string // its usage line after "underpass "
	summary  string // what it does, one line
	operands string // its positional arguments, for messages ("ID"); "" for none
	minArgs  int    // fewest positional arguments
	maxArgs  int    // most positional arguments
	// setup binds the command's flags on fs and returns the function that
	// runs the command once fs has parsed the command line.
	setup func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command whose flags and arguments have been parsed; it
// returns the exit code.
type runFunc func(inv *invocation) int

// invocation is one run of a command: its positional arguments (flags
// removed) and standard streams.
type invocation struct {
	cmd    *command
	args   []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// commands is the command table, in the order the overview lists it.
var commands []*command

// init fills the command table. It is assigned here, not in its
// declaration, because the help command reads the table (an
// initialization cycle otherwise).
func init() {
	commands = []*command{
		{name: "serve", synopsis: "serve [-config FILE] [-listen ADDR] [-v]",
			summary: "Run the gateway a YAML config file describes, else the embedded demo (127.0.0.1:8443, self-signed certificate, demo user).",
			setup:   serveCommand},
		{name: "check config", synopsis: "check config FILE", operands: "FILE", minArgs: 1, maxArgs: 1,
			summary: "Validate a config file and exit.",
			setup:   checkConfigCommand},
		{name: "check cert", synopsis: "check cert (-config FILE | --cert F --key F | --pfx F [--password-file F]) [--host NAME]",
			summary: "Check a certificate against the R-T2 rules (key match, names, chain, validity); exit 0 when it has no errors.",
			setup:   checkCertCommand},
		{name: "check network", synopsis: "check network -config FILE",
			summary: "Readiness before a start: the ports are free, the DNS servers answer, the check URL and the IdP are reachable.",
			setup:   checkNetworkCommand},
		{name: "hash-password", synopsis: "hash-password [-cost N] < password",
			summary: "Print the bcrypt hash of the password on stdin, for a static user in the config.",
			setup:   hashPasswordCommand},
		{name: "status", synopsis: "status [--site] [--json]",
			summary: "Show the health of the running server; --site: every server of the site (health, version, configuration).",
			setup:   statusCommand},
		{name: "show users", synopsis: "show users [--json]",
			summary: "List the users with sessions on the running server.",
			setup:   showUsersCommand},
		{name: "show sessions", synopsis: "show sessions [--site] [--json]",
			summary: "List the sessions on the running server (--site: on every server of the site, from the site store).",
			setup:   showSessionsCommand},
		{name: "show bans", synopsis: "show bans [--json]",
			summary: "List the source addresses banned for failed sign-ins.",
			setup:   showBansCommand},
		{name: "show events", synopsis: "show events [--json]",
			summary: "Show the running server's recent events: warnings, errors and session records.",
			setup:   showEventsCommand},
		{name: "show session", synopsis: "show session ID [--json]", operands: "ID", minArgs: 1, maxArgs: 1,
			summary: "Show one session in detail.",
			setup:   showSessionCommand},
		{name: "bans lift", synopsis: "bans lift IP [--json]", operands: "IP", minArgs: 1, maxArgs: 1,
			summary: "Lift the ban on a client address, on every server of the site.",
			setup:   bansLiftCommand},
		{name: "disconnect", synopsis: "disconnect ID", operands: "ID", minArgs: 1, maxArgs: 1,
			summary: "Log a session off.",
			setup:   disconnectCommand},
		{name: "import-cert", synopsis: "import-cert (--cert site.crt --key site.key | --pfx site.pfx [--password-file F]) [--delay MINUTES] [--json]",
			summary: "Give the running server a new certificate, at once or after a delay; a staged import survives restarts.",
			setup:   importCertCommand},
		{name: "server stop", synopsis: "server stop [--timeout 10s]",
			summary: "Drain the running server and let it exit: it stops accepting and ends its sessions.",
			setup:   serverStopCommand},
		{name: "site push", synopsis: "site push -config FILE [-wait [-timeout 1m]] [-revision N] SITE.yaml", operands: "SITE.yaml", minArgs: 1, maxArgs: 1,
			summary: "Validate a site configuration and write it to the site store, where every server applies it; -wait until they all run it.",
			setup:   sitePushCommand},
		{name: "site pull", synopsis: "site pull -config FILE > SITE.yaml",
			summary: "Print the site configuration the site store holds (its revision on stderr).",
			setup:   sitePullCommand},
		{name: "loadtest", synopsis: "loadtest -server ADDR (-user NAME -password-file F | -token-file F) [-mode light|tls|quic] [-sessions N] [-flows N -target ADDR] ... | loadtest -echo ADDR",
			summary: "Hold sessions, flows and bulk transfers on a gateway and print the sizing table (sessions, flows, Mbit/s, setup rate, RSS and CPU per 1,000 devices); -echo serves the flows' target.",
			setup:   loadtestCommand},
		{name: "help", synopsis: "help [CMD]", operands: "CMD", maxArgs: 2,
			summary: "Show the commands, or a command's usage and flags.",
			setup:   helpCommand},
	}
}

// run runs the command line args (without the program name) and returns
// the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		overview(stderr)
		return exitUsage
	}
	if isHelpFlag(args[0]) {
		overview(stdout)
		return exitOK
	}
	if c := lookup(args[0]); c != nil {
		return c.invoke(args[1:], stdin, stdout, stderr)
	}
	group := groupOf(args[0])
	if group == nil {
		fmt.Fprintf(stderr, "underpass: unknown command %q\n", args[0])
		overview(stderr)
		return exitUsage
	}
	c, word := resolve(group, args[1:])
	if c != nil {
		return c.invoke(args[1:], stdin, stdout, stderr)
	}
	if slices.ContainsFunc(args[1:], isHelpFlag) {
		groupUsage(stdout, args[0], group)
		return exitOK
	}
	msg := "missing subcommand"
	if word != "" {
		msg = fmt.Sprintf("unknown subcommand %q", word)
	}
	fmt.Fprintf(stderr, "underpass %s: %s\n", args[0], msg)
	groupUsage(stderr, args[0], group)
	return exitUsage
}

// resolve finds the member of a group of commands (show users, show
// sessions, ...) that args, the words after the group's name, select.
// The subcommand's word is the first positional argument, so flags may
// come before it as well as after (show --json sessions). When no member
// parses args, the member a word names is chosen, to report the flag
// error itself. When none is found, word is the subcommand args give
// instead, if any.
func resolve(group []*command, args []string) (c *command, word string) {
	failed := make(map[*command]bool)
	for _, m := range group {
		fs, _ := m.flags()
		pos, err := parseArgs(fs, args)
		if err == nil && len(pos) > 0 && pos[0] == m.subword() {
			return m, pos[0]
		}
		if err == nil && len(pos) > 0 && word == "" {
			word = pos[0]
		}
		failed[m] = err != nil
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		for _, m := range group {
			if a == m.subword() && failed[m] {
				return m, a
			}
		}
		if word == "" && !strings.HasPrefix(a, "-") {
			word = a
		}
	}
	return nil, word
}

// invoke parses args with the command's own flags and runs it. For a
// member of a group, args are the words after the group's name, and the
// first positional argument is its subcommand word (resolve chose it so).
// A bad flag or a wrong number of arguments is a usage error; -h prints
// the usage to stdout.
func (c *command) invoke(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs, runc := c.flags()
	inv := &invocation{cmd: c, stdin: stdin, stdout: stdout, stderr: stderr}
	pos, err := parseArgs(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.usage(stdout)
		return exitOK
	case err != nil:
		return inv.usageError("%v", err)
	}
	if c.subword() != c.name {
		pos = pos[1:]
	}
	switch {
	case len(pos) < c.minArgs:
		return inv.usageError("missing %s", c.operands)
	case len(pos) > c.maxArgs:
		return inv.usageError("unexpected argument %q", pos[c.maxArgs])
	}
	inv.args = pos
	return runc(inv)
}

// flags returns a new flag set with the command's flags, and the function
// that runs the command once the set has parsed its command line. The set
// reports nothing itself: its caller reports parse errors and prints usage.
func (c *command) flags() (*flag.FlagSet, runFunc) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs, c.setup(fs)
}

// parseArgs parses args with fs and returns the positional arguments.
// Flags may come before, between or after them; "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// hasFlags reports whether any flag is defined on fs.
func hasFlags(fs *flag.FlagSet) bool {
	defined := false
	fs.VisitAll(func(*flag.Flag) { defined = true })
	return defined
}

// subword is the word that selects the command within its group ("session"
// for "show session"), or its whole name when it is in no group.
func (c *command) subword() string {
	_, sub, ok := strings.Cut(c.name, " ")
	if !ok {
		return c.name
	}
	return sub
}

// usageError reports a bad command line: a line naming the command, then
// its usage, on stderr. It returns exitUsage.
func (inv *invocation) usageError(format string, a ...any) int {
	fmt.Fprintf(inv.stderr, "underpass %s: %s\n", inv.cmd.name, fmt.Sprintf(format, a...))
	inv.cmd.usage(inv.stderr)
	return exitUsage
}

// usage prints the command's synopsis, what it does and its flags with
// their defaults.
func (c *command) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: underpass %s\n\n%s\n", c.synopsis, c.summary)
	fs, _ := c.flags()
	if hasFlags(fs) {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// overview prints every command's synopsis and the exit codes.
func overview(w io.Writer) {
	fmt.Fprintln(w, "usage:")
	for _, c := range commands {
		fmt.Fprintf(w, "  underpass %s\n", c.synopsis)
	}
	fmt.Fprint(w, `every command that talks to a running server takes -admin-socket PATH; exit codes:
  0 ok, 1 failure, 2 usage, 3 config, 4 server not running, 5 not found
underpass help CMD (or underpass CMD -h) shows a command's flags
`)
}

// groupUsage prints the synopses of a group's commands.
func groupUsage(w io.Writer, name string, group []*command) {
	fmt.Fprintln(w, "usage:")
	for _, c := range group {
		fmt.Fprintf(w, "  underpass %s\n", c.synopsis)
	}
	fmt.Fprintf(w, "underpass help %s CMD shows a command's flags\n", name)
}

// lookup returns the command called name, or nil.
func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// groupOf returns the commands whose name starts with the word first
// ("show" for show users, show sessions, ...), or nil.
func groupOf(first string) []*command {
	var group []*command
	for _, c := range commands {
		if strings.HasPrefix(c.name, first+" ") {
			group = append(group, c)
		}
	}
	return group
}

// isHelpFlag reports whether a is one of the spellings of -h.
func isHelpFlag(a string) bool {
	return a == "-h" || a == "-help" || a == "--help" || a == "--h"
}

// helpCommand binds the flags of `underpass help` (none).
func helpCommand(*flag.FlagSet) runFunc {
	return func(inv *invocation) int {
		if len(inv.args) == 0 {
			overview(inv.stdout)
			return exitOK
		}
		topic := strings.Join(inv.args, " ")
		if c := lookup(topic); c != nil {
			c.usage(inv.stdout)
			return exitOK
		}
		if group := groupOf(topic); group != nil && len(inv.args) == 1 {
			groupUsage(inv.stdout, topic, group)
			return exitOK
		}
		return inv.usageError("unknown command %q", topic)
	}
}
