package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/admin"
	"github.com/underpass/underpass/internal/certstore"
	"github.com/underpass/underpass/internal/certutil"
	"github.com/underpass/underpass/internal/events"
	"github.com/underpass/underpass/tunnel"
)

// More exit codes, for scripts (see also exitOK...exitConfig).
const (
	exitNotRunning = 4 // no server answers on the admin socket
	exitNotFound   = 5 // unknown session id
)

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

// cli runs an operator command against the running server.
func cli(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("admin-socket", "", "admin socket (default "+defaultSocketHint+")")
	asJSON := fs.Bool("json", false, "JSON output")
	certFile := fs.String("cert", "", "import-cert: certificate chain (PEM)")
	keyFile := fs.String("key", "", "import-cert: private key (PEM)")
	pfxFile := fs.String("pfx", "", "import-cert: PKCS#12 file")
	pfxPass := fs.String("password-file", "", "import-cert: file holding the PFX password")
	delay := fs.Int("delay", 0, "import-cert: minutes until the certificate takes effect")
	timeout := fs.Duration("timeout", shutdownGrace, "server stop: drain deadline")
	// Flags may come after the positional words (show session ID --json).
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	path, err := socketPath(*sock)
	if err != nil {
		fmt.Fprintln(stderr, "underpass:", err)
		return exitFail
	}
	c := admin.NewClient(path)
	out := func(v any, human func(w io.Writer)) int {
		if *asJSON {
			e := json.NewEncoder(stdout)
			e.SetIndent("", "  ")
			_ = e.Encode(v)
			return exitOK
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		human(tw)
		tw.Flush()
		return exitOK
	}
	call := func(method, p string, body, v any) int {
		err := c.Do(method, p, body, v)
		var se *admin.StatusError
		switch {
		case err == nil:
			return -1
		case errors.Is(err, admin.ErrNotRunning):
			fmt.Fprintln(stderr, "underpass is not running:", err)
			return exitNotRunning
		case errors.As(err, &se) && se.Code == 404:
			fmt.Fprintln(stderr, "underpass:", se.Msg)
			return exitNotFound
		case errors.As(err, &se) && se.Code < 500 && se.Code != 501:
			fmt.Fprintln(stderr, "underpass:", se.Msg)
			return exitUsage
		}
		fmt.Fprintln(stderr, "underpass:", err)
		return exitFail
	}
	usageErr := func(msg string) int {
		fmt.Fprintln(stderr, "underpass:", msg)
		usage(stderr)
		return exitUsage
	}

	switch {
	case cmd == "status" && len(pos) == 0:
		var st admin.Status
		if code := call("GET", "/v1/status", nil, &st); code >= 0 {
			return code
		}
		return out(st, func(w io.Writer) {
			fmt.Fprintf(w, "listen\t%s\nuptime\t%s\nready\t%v\nsessions\t%d (%d connected)\nsign-ins\t%d ok, %d failed\nbytes\t%d in, %d out\nflows\t%d tcp, %d udp\n",
				st.Listen, st.Uptime, st.Ready, st.Sessions, st.Connected, st.SignIns, st.Failures, st.BytesIn, st.BytesOut, st.TCPFlows, st.UDPFlows)
			fmt.Fprintf(w, "certificate\t%s, expires %s\n", st.Certificate.Subject, st.Certificate.NotAfter.Format(time.DateOnly))
			if s := st.Certificate.Staged; s != nil {
				fmt.Fprintf(w, "staged certificate\t%s, effective %s\n", s.Subject, s.EffectiveAt.Local().Format(time.DateTime))
			}
		})
	case cmd == "show" && len(pos) == 1 && pos[0] == "sessions":
		var ss []tunnel.SessionInfo
		if code := call("GET", "/v1/sessions", nil, &ss); code >= 0 {
			return code
		}
		return out(ss, func(w io.Writer) {
			fmt.Fprintln(w, "ID\tUSER\tADDRESS\tCLIENT\tCONNECTED\tSINCE\tIN\tOUT")
			for _, s := range ss {
				fmt.Fprintf(w, "%s\t%s\t%v\t%v\t%v\t%s\t%d\t%d\n", s.ID, s.User, s.Address, s.ClientAddr.Addr(), s.Connected,
					s.Created.Local().Format(time.TimeOnly), s.BytesIn, s.BytesOut)
			}
		})
	case cmd == "show" && len(pos) == 2 && pos[0] == "session":
		var s tunnel.SessionInfo
		if code := call("GET", "/v1/sessions/"+pos[1], nil, &s); code >= 0 {
			return code
		}
		return out(s, func(w io.Writer) {
			fmt.Fprintf(w, "id\t%s\nuser\t%s\ndevice\t%s\nuser agent\t%s\naddress\t%v\nclient\t%v\nconnected\t%v\ncreated\t%s\nexpires\t%s\nbytes\t%d in, %d out\n",
				s.ID, s.User, s.DeviceID, s.UserAgent, s.Address, s.ClientAddr, s.Connected,
				s.Created.Local().Format(time.DateTime), s.Expires.Local().Format(time.DateTime), s.BytesIn, s.BytesOut)
		})
	case cmd == "show" && len(pos) == 1 && pos[0] == "users":
		var us []admin.User
		if code := call("GET", "/v1/users", nil, &us); code >= 0 {
			return code
		}
		return out(us, func(w io.Writer) {
			fmt.Fprintln(w, "USER\tSESSIONS\tADDRESSES\tIN\tOUT")
			for _, u := range us {
				fmt.Fprintf(w, "%s\t%d\t%v\t%d\t%d\n", u.User, u.Sessions, u.Addresses, u.BytesIn, u.BytesOut)
			}
		})
	case cmd == "show" && len(pos) == 1 && pos[0] == "bans":
		var bs []auth.Ban
		if code := call("GET", "/v1/bans", nil, &bs); code >= 0 {
			return code
		}
		return out(bs, func(w io.Writer) {
			fmt.Fprintln(w, "ADDRESS\tUNTIL")
			for _, b := range bs {
				fmt.Fprintf(w, "%v\t%s\n", b.Addr, b.Until.Local().Format(time.DateTime))
			}
		})
	case cmd == "show" && len(pos) == 1 && pos[0] == "events":
		var ev []events.Event
		if code := call("GET", "/v1/events", nil, &ev); code >= 0 {
			return code
		}
		return out(ev, func(w io.Writer) {
			for _, e := range ev {
				var kv []string
				for k, v := range e.Attrs {
					kv = append(kv, k+"="+v)
				}
				slices.Sort(kv)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Level, e.Msg, strings.Join(kv, " "))
			}
		})
	case cmd == "disconnect" && len(pos) == 1:
		if code := call("POST", "/v1/sessions/"+pos[0]+"/disconnect", nil, nil); code >= 0 {
			return code
		}
		fmt.Fprintf(stdout, "session %s disconnected\n", pos[0])
		return exitOK
	case cmd == "import-cert" && len(pos) == 0:
		req := admin.ImportRequest{DelayMinutes: *delay}
		switch {
		case *pfxFile != "" && *certFile == "" && *keyFile == "":
			if req.PFX, err = os.ReadFile(*pfxFile); err != nil {
				fmt.Fprintln(stderr, "underpass:", err)
				return exitUsage
			}
			if *pfxPass != "" {
				if req.PFXPassword, err = certutil.ReadPasswordFile(*pfxPass); err != nil {
					fmt.Fprintln(stderr, "underpass:", err)
					return exitUsage
				}
			}
		case *pfxFile == "" && *certFile != "" && *keyFile != "":
			if req.CertPEM, err = os.ReadFile(*certFile); err == nil {
				req.KeyPEM, err = os.ReadFile(*keyFile)
			}
			if err != nil {
				fmt.Fprintln(stderr, "underpass:", err)
				return exitUsage
			}
		default:
			return usageErr("import-cert needs --cert and --key, or --pfx")
		}
		var st certstore.Staged
		if code := call("POST", "/v1/cert", req, &st); code >= 0 {
			return code
		}
		return out(st, func(w io.Writer) {
			fmt.Fprintf(w, "staged %s (expires %s); takes effect %s\n", st.Subject, st.NotAfter.Format(time.DateOnly), st.EffectiveAt.Local().Format(time.DateTime))
		})
	case cmd == "server" && len(pos) == 1 && pos[0] == "stop":
		if code := call("POST", "/v1/stop?timeout="+timeout.String(), nil, nil); code >= 0 {
			return code
		}
		fmt.Fprintf(stdout, "underpass is draining (up to %v)\n", *timeout)
		return exitOK
	}
	return usageErr(fmt.Sprintf("unknown command: %s %s", cmd, strings.Join(pos, " ")))
}
