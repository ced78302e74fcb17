package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/internal/daemon/certstore"
	"github.com/underpass/underpass/internal/daemon/events"
	"github.com/underpass/underpass/tunnel"
)

// More exit codes, for scripts (see also exitOK...exitConfig).
const (
	exitNotRunning = 4 // no server answers on the admin socket
	exitNotFound   = 5 // unknown session id
)

// defaultSocketHint says, for usage texts, where the admin socket is
// when -admin-socket is not given (see socketPath).
const defaultSocketHint = "$XDG_RUNTIME_DIR/underpass/admin.sock, else ~/.config/underpass/admin.sock"

// socketPath returns the admin socket path: the flag, else the default.
func socketPath(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "underpass", "admin.sock"), nil
	}
	d, err := stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "admin.sock"), nil
}

// adminFlags are the flags of a command that talks to a running server.
type adminFlags struct {
	socket string // -admin-socket
	json   bool   // --json: print the server's answer as JSON
}

// bindAdmin binds -admin-socket on fs, and --json when the command's
// output can be JSON.
func bindAdmin(fs *flag.FlagSet, jsonOutput bool) *adminFlags {
	f := &adminFlags{}
	fs.StringVar(&f.socket, "admin-socket", "", "admin socket (default "+defaultSocketHint+")")
	if jsonOutput {
		fs.BoolVar(&f.json, "json", false, "JSON output")
	}
	return f
}

// call sends one request to the running server and decodes its answer
// into v (unless nil). On failure it reports on stderr and returns the
// exit code with ok false: exitNotRunning when nothing answers,
// exitNotFound for an unknown object, exitUsage for another refused
// request, else exitFail.
func (f *adminFlags) call(inv *invocation, method, path string, body, v any) (code int, ok bool) {
	sock, err := socketPath(f.socket)
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass:", err)
		return exitFail, false
	}
	err = admin.NewClient(sock).Do(method, path, body, v)
	var se *admin.StatusError
	switch {
	case err == nil:
		return exitOK, true
	case errors.Is(err, admin.ErrNotRunning):
		fmt.Fprintln(inv.stderr, "underpass is not running:", err)
		return exitNotRunning, false
	case errors.As(err, &se) && se.Code == 404:
		fmt.Fprintln(inv.stderr, "underpass:", se.Msg)
		return exitNotFound, false
	case errors.As(err, &se) && se.Code < 500 && se.Code != 501:
		fmt.Fprintln(inv.stderr, "underpass:", se.Msg)
		return exitUsage, false
	}
	fmt.Fprintln(inv.stderr, "underpass:", err)
	return exitFail, false
}

// print writes v to stdout: as JSON with --json, else as the table human
// writes.
func (f *adminFlags) print(inv *invocation, v any, human func(w io.Writer)) int {
	if f.json {
		e := json.NewEncoder(inv.stdout)
		e.SetIndent("", "  ")
		_ = e.Encode(v)
		return exitOK
	}
	tw := tabwriter.NewWriter(inv.stdout, 2, 4, 2, ' ', 0)
	human(tw)
	tw.Flush()
	return exitOK
}

// query gets path from the running server as a T and prints it.
func query[T any](f *adminFlags, inv *invocation, path string, human func(w io.Writer, v T)) int {
	var v T
	if code, ok := f.call(inv, "GET", path, nil, &v); !ok {
		return code
	}
	return f.print(inv, v, func(w io.Writer) { human(w, v) })
}

// statusCommand binds the flags of `underpass status`.
func statusCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	siteWide := fs.Bool("site", false, "every server of the site, from the site store")
	return func(inv *invocation) int {
		if *siteWide {
			return query(f, inv, "/v1/site", printSite)
		}
		return query(f, inv, "/v1/status", printStatus)
	}
}

// bansLiftCommand binds the flags of `underpass bans lift IP`.
func bansLiftCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	return func(inv *invocation) int {
		var res admin.LiftResult
		if code, ok := f.call(inv, "POST", "/v1/bans/"+url.PathEscape(inv.args[0])+"/lift", nil, &res); !ok {
			return code
		}
		return f.print(inv, res, func(w io.Writer) {
			if res.WasBanned {
				fmt.Fprintf(w, "ban on %v lifted here and on every server of the site\n", res.Addr)
			} else {
				fmt.Fprintf(w, "%v was not banned here; the lift goes to every server of the site\n", res.Addr)
			}
		})
	}
}

// printStatus writes the server's status as a table.
func printStatus(w io.Writer, st admin.Status) {
	fmt.Fprintf(w, "listen\t%s\nuptime\t%s\nready\t%v\nsessions\t%d (%d connected)\nsign-ins\t%d ok, %d failed\nbytes\t%d in, %d out\nflows\t%d tcp, %d udp\n",
		st.Listen, st.Uptime, st.Ready, st.Sessions, st.Connected, st.SignIns, st.Failures, st.BytesIn, st.BytesOut, st.TCPFlows, st.UDPFlows)
	fmt.Fprintf(w, "file descriptors\t%d open, limit %d (hard %d), %d dials refused for lack of them\n",
		st.OpenFDs, st.FDs.Soft, st.FDs.Hard, st.DialNoFD)
	fmt.Fprintf(w, "certificate\t%s, expires %s\n", st.Certificate.Subject, st.Certificate.NotAfter.Format(time.DateOnly))
	if s := st.Certificate.Staged; s != nil {
		fmt.Fprintf(w, "staged certificate\t%s, effective %s\n", s.Subject, s.EffectiveAt.Local().Format(time.DateTime))
	}
}

// showSessionsCommand binds the flags of `underpass show sessions`.
func showSessionsCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	site := fs.Bool("site", false, "every server's sessions, from the site store")
	return func(inv *invocation) int {
		if *site {
			return showSiteSessions(f, inv)
		}
		return query(f, inv, "/v1/sessions", func(w io.Writer, ss []tunnel.SessionInfo) {
			fmt.Fprintln(w, "ID\tUSER\tADDRESS\tCLIENT\tCONNECTED\tSINCE\tIN\tOUT")
			for _, s := range ss {
				fmt.Fprintf(w, "%s\t%s\t%v\t%v\t%v\t%s\t%d\t%d\n", s.ID, s.User, s.Address, s.ClientAddr.Addr(), s.Connected,
					s.Created.Local().Format(time.TimeOnly), s.BytesIn, s.BytesOut)
			}
		})
	}
}

// showSiteSessions prints the site's sessions on every server, as the
// site store's address leases record them.
func showSiteSessions(f *adminFlags, inv *invocation) int {
	return query(f, inv, "/v1/site/sessions", func(w io.Writer, ss []admin.SiteSession) {
		fmt.Fprintln(w, "ADDRESS\tADDRESS6\tSERVER\tUSER\tCLIENT\tSINCE\tEXPIRES\tID")
		orDash := func(a netip.Addr) string {
			if a.IsValid() {
				return a.String()
			}
			return "-"
		}
		for _, s := range ss {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(s.Address), orDash(s.Address6), s.Server, s.User, orDash(s.Client),
				s.Since.Local().Format(time.DateTime), s.Expires.Local().Format(time.DateTime), s.Session)
		}
	})
}

// showSessionCommand binds the flags of `underpass show session ID`.
func showSessionCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	return func(inv *invocation) int {
		return query(f, inv, "/v1/sessions/"+inv.args[0], func(w io.Writer, s tunnel.SessionInfo) {
			fmt.Fprintf(w, "id\t%s\nuser\t%s\ndevice\t%s\nuser agent\t%s\naddress\t%v\nclient\t%v\nconnected\t%v\ncreated\t%s\nexpires\t%s\nbytes\t%d in, %d out\n",
				s.ID, s.User, s.DeviceID, s.UserAgent, s.Address, s.ClientAddr, s.Connected,
				s.Created.Local().Format(time.DateTime), s.Expires.Local().Format(time.DateTime), s.BytesIn, s.BytesOut)
			if s.Address6.IsValid() { // a dual-stack session (pool6)
				fmt.Fprintf(w, "address6\t%v\n", s.Address6)
			}
		})
	}
}

// showUsersCommand binds the flags of `underpass show users`.
func showUsersCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	return func(inv *invocation) int {
		return query(f, inv, "/v1/users", func(w io.Writer, us []admin.User) {
			fmt.Fprintln(w, "USER\tSESSIONS\tADDRESSES\tIN\tOUT")
			for _, u := range us {
				fmt.Fprintf(w, "%s\t%d\t%v\t%d\t%d\n", u.User, u.Sessions, u.Addresses, u.BytesIn, u.BytesOut)
			}
		})
	}
}

// showBansCommand binds the flags of `underpass show bans`.
func showBansCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	return func(inv *invocation) int {
		return query(f, inv, "/v1/bans", func(w io.Writer, bs []auth.Ban) {
			fmt.Fprintln(w, "ADDRESS\tUNTIL")
			for _, b := range bs {
				fmt.Fprintf(w, "%v\t%s\n", b.Addr, b.Until.Local().Format(time.DateTime))
			}
		})
	}
}

// showEventsCommand binds the flags of `underpass show events`.
func showEventsCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	return func(inv *invocation) int {
		return query(f, inv, "/v1/events", func(w io.Writer, ev []events.Event) {
			for _, e := range ev {
				var kv []string
				for k, v := range e.Attrs {
					kv = append(kv, k+"="+v)
				}
				slices.Sort(kv)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Level, e.Msg, strings.Join(kv, " "))
			}
		})
	}
}

// disconnectCommand binds the flags of `underpass disconnect ID`.
func disconnectCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, false)
	return func(inv *invocation) int {
		id := inv.args[0]
		if code, ok := f.call(inv, "POST", "/v1/sessions/"+id+"/disconnect", nil, nil); !ok {
			return code
		}
		fmt.Fprintf(inv.stdout, "session %s disconnected\n", id)
		return exitOK
	}
}

// certFlags name a certificate and its key: PEM files, or a PKCS#12 file
// and the file holding its password.
type certFlags struct {
	cert, key, pfx, passwordFile string
}

// bind binds --cert, --key, --pfx and --password-file on fs.
func (f *certFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.cert, "cert", "", "certificate chain (PEM)")
	fs.StringVar(&f.key, "key", "", "private key (PEM)")
	fs.StringVar(&f.pfx, "pfx", "", "PKCS#12 file")
	fs.StringVar(&f.passwordFile, "password-file", "", "file holding the PFX password")
}

// importCertCommand binds the flags of `underpass import-cert`.
func importCertCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, true)
	cf := &certFlags{}
	cf.bind(fs)
	delay := fs.Int("delay", 0, "minutes until the certificate takes effect")
	return func(inv *invocation) int { return importCert(f, cf, *delay, inv) }
}

// importCert sends the certificate cf names to the running server, to take
// effect after delay minutes.
func importCert(f *adminFlags, cf *certFlags, delay int, inv *invocation) int {
	req := admin.ImportRequest{DelayMinutes: delay}
	var err error
	switch {
	case cf.pfx != "" && cf.cert == "" && cf.key == "":
		if req.PFX, err = os.ReadFile(cf.pfx); err == nil && cf.passwordFile != "" {
			req.PFXPassword, err = certutil.ReadPasswordFile(cf.passwordFile)
		}
	case cf.pfx == "" && cf.cert != "" && cf.key != "":
		if req.CertPEM, err = os.ReadFile(cf.cert); err == nil {
			req.KeyPEM, err = os.ReadFile(cf.key)
		}
	default:
		return inv.usageError("needs --cert and --key, or --pfx")
	}
	if err != nil {
		fmt.Fprintln(inv.stderr, "underpass:", err)
		return exitUsage
	}
	var st certstore.Staged
	if code, ok := f.call(inv, "POST", "/v1/cert", req, &st); !ok {
		return code
	}
	return f.print(inv, st, func(w io.Writer) {
		fmt.Fprintf(w, "staged %s (expires %s); takes effect %s\n", st.Subject, st.NotAfter.Format(time.DateOnly), st.EffectiveAt.Local().Format(time.DateTime))
	})
}

// serverStopCommand binds the flags of `underpass server stop`.
func serverStopCommand(fs *flag.FlagSet) runFunc {
	f := bindAdmin(fs, false)
	timeout := fs.Duration("timeout", shutdownGrace, "drain deadline, counted after the config's drain_delay")
	return func(inv *invocation) int {
		if code, ok := f.call(inv, "POST", "/v1/stop?timeout="+timeout.String(), nil, nil); !ok {
			return code
		}
		fmt.Fprintf(inv.stdout, "underpass is draining (up to %v)\n", *timeout)
		return exitOK
	}
}
