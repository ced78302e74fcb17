// Package authxml reads and writes the XML sign-in exchange of the
// AnyConnect protocol (<config-auth> documents), as openconnect 9.x speaks
// it: the client's "init" and "auth-reply" messages, and the gateway's
// "auth-request" form and "complete" success reply.
package authxml

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxMessageSize bounds a client message. openconnect's messages are well
// under 4 KiB; 64 KiB leaves room for long form values and is small enough
// that parsing cost is bounded.
const MaxMessageSize = 64 << 10

// maxInputs bounds the form fields kept from one auth-reply: a real form has
// two or three; more is an attack on memory.
const maxInputs = 32

// ErrNotConfigAuth means the body is not a <config-auth> document.
var ErrNotConfigAuth = errors.New("authxml: not a config-auth document")

// ParseError describes a message that could not be parsed.
type ParseError struct {
	Reason string
	Err    error
}

func (e *ParseError) Error() string {
	if e.Err != nil {
		return "authxml: " + e.Reason + ": " + e.Err.Error()
	}
	return "authxml: " + e.Reason
}

func (e *ParseError) Unwrap() error { return e.Err }

// ClientMessage is a parsed client <config-auth> message.
type ClientMessage struct {
	Type        string // "init", "auth-reply", "logout", ...
	Version     string
	DeviceID    string
	GroupAccess string
	GroupSelect string
	// Opaque is the inner XML of <opaque>, echoed from the server's form.
	Opaque []byte
	// Inputs maps each child of <auth> to its text.
	Inputs map[string]string
	// AuthMethods lists the init's <capabilities><auth-method> values,
	// e.g. "single-sign-on-v2", "single-sign-on-external-browser".
	AuthMethods []string
}

// HasAuthMethod reports whether the client advertised the auth-method m.
func (m *ClientMessage) HasAuthMethod(name string) bool {
	for _, a := range m.AuthMethods {
		if a == name {
			return true
		}
	}
	return false
}

// Username returns the "username" input.
func (m *ClientMessage) Username() string { return m.Inputs["username"] }

// Password returns the "password" input.
func (m *ClientMessage) Password() string { return m.Inputs["password"] }

type xmlField struct {
	XMLName xml.Name
	Value   string `xml:",chardata"`
}

type xmlClient struct {
	XMLName     xml.Name `xml:"config-auth"`
	Type        string   `xml:"type,attr"`
	Version     string   `xml:"version"`
	DeviceID    string   `xml:"device-id"`
	GroupAccess string   `xml:"group-access"`
	GroupSelect string   `xml:"group-select"`
	Opaque      struct {
		Inner []byte `xml:",innerxml"`
	} `xml:"opaque"`
	Auth struct {
		Fields []xmlField `xml:",any"`
	} `xml:"auth"`
	Capabilities struct {
		AuthMethods []string `xml:"auth-method"`
	} `xml:"capabilities"`
}

// ParseClient parses a client message of at most MaxMessageSize bytes.
func ParseClient(body []byte) (*ClientMessage, error) {
	if len(body) > MaxMessageSize {
		return nil, &ParseError{Reason: fmt.Sprintf("message larger than %d bytes", MaxMessageSize)}
	}
	if !bytes.Contains(body, []byte("config-auth")) {
		return nil, &ParseError{Reason: "no config-auth element", Err: ErrNotConfigAuth}
	}
	var x xmlClient
	d := xml.NewDecoder(bytes.NewReader(body))
	d.Strict = true
	d.CharsetReader = func(label string, r io.Reader) (io.Reader, error) {
		// UTF-8 (and its ASCII subset) only: other charsets are not in use.
		if strings.EqualFold(label, "utf-8") || strings.EqualFold(label, "us-ascii") {
			return r, nil
		}
		return nil, fmt.Errorf("unsupported charset %q", label)
	}
	if err := d.Decode(&x); err != nil {
		var ue xml.UnmarshalError
		if errors.As(err, &ue) || strings.Contains(err.Error(), "expected element type") {
			return nil, &ParseError{Reason: "not a config-auth document", Err: ErrNotConfigAuth}
		}
		return nil, &ParseError{Reason: "malformed XML", Err: err}
	}
	if x.Type == "" {
		return nil, &ParseError{Reason: "config-auth without a type"}
	}
	if len(x.Auth.Fields) > maxInputs || len(x.Capabilities.AuthMethods) > maxInputs {
		return nil, &ParseError{Reason: fmt.Sprintf("more than %d auth inputs", maxInputs)}
	}
	m := &ClientMessage{
		Type: x.Type, Version: strings.TrimSpace(x.Version), DeviceID: strings.TrimSpace(x.DeviceID),
		GroupAccess: strings.TrimSpace(x.GroupAccess), GroupSelect: strings.TrimSpace(x.GroupSelect),
		Opaque: x.Opaque.Inner, Inputs: make(map[string]string, len(x.Auth.Fields)),
	}
	for _, f := range x.Auth.Fields {
		m.Inputs[f.XMLName.Local] = f.Value
	}
	for _, a := range x.Capabilities.AuthMethods {
		m.AuthMethods = append(m.AuthMethods, strings.TrimSpace(a))
	}
	return m, nil
}

// Input is one field of the sign-in form.
type Input struct {
	Type  string // "text", "password" or "hidden"
	Name  string
	Label string
	Value string
}

// Form is the gateway's sign-in form (an "auth-request").
type Form struct {
	Title   string
	Message string
	Banner  string
	Error   string // shown to the user above the form, e.g. after a failed try
	Action  string // path the form posts back to
	// Opaque is an opaque string the client echoes back verbatim; it is
	// escaped here and returned, unescaped, in ClientMessage.Opaque's text.
	Opaque string
	Inputs []Input
	Groups []string // optional <select name="group_list">
	// SSO, if set, makes this the SSO v2 external-browser form: the
	// sso-v2-* elements and a single "sso-token" input (Inputs and Groups
	// are ignored; sso.md §2, §6).
	SSO *SSOForm
}

// SSOForm is the SSO v2 part of a form (shared/docs/sso.md §2).
type SSOForm struct {
	Login           string // <sso-v2-login>: the URL the browser opens
	LoginFinal      string // <sso-v2-login-final>
	TokenCookieName string // <sso-v2-token-cookie-name>
	ErrorCookieName string // <sso-v2-error-cookie-name>
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

const header = `<?xml version="1.0" encoding="UTF-8"?>` + "\n"

// RenderAuthRequest renders f as an auth-request document.
func RenderAuthRequest(f Form) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString(`<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">` + "\n")
	if f.Opaque != "" {
		fmt.Fprintf(&b, "<opaque is-for=\"sg\">%s</opaque>\n", esc(f.Opaque))
	}
	b.WriteString(`<auth id="main">` + "\n")
	for _, el := range []struct{ name, v string }{{"title", f.Title}, {"message", f.Message}, {"banner", f.Banner}, {"error", f.Error}} {
		if el.v != "" {
			fmt.Fprintf(&b, "<%s>%s</%s>\n", el.name, esc(el.v), el.name)
		}
	}
	if f.SSO != nil {
		// All four elements even though the CLI reads only the login URL:
		// embedded-webview front ends compare the cookie names without a
		// NULL check. browser-mode "external" is what makes the CLI run
		// --external-browser at all.
		for _, el := range []struct{ name, v string }{
			{"sso-v2-login", f.SSO.Login}, {"sso-v2-login-final", f.SSO.LoginFinal},
			{"sso-v2-token-cookie-name", f.SSO.TokenCookieName}, {"sso-v2-error-cookie-name", f.SSO.ErrorCookieName},
			{"sso-v2-browser-mode", "external"},
		} {
			fmt.Fprintf(&b, "<%s>%s</%s>\n", el.name, esc(el.v), el.name)
		}
		fmt.Fprintf(&b, "<form method=\"post\" action=\"%s\">\n", esc(f.Action))
		b.WriteString(`<input type="sso" name="sso-token"></input>` + "\n")
		b.WriteString("</form>\n</auth>\n</config-auth>\n")
		return []byte(b.String())
	}
	fmt.Fprintf(&b, "<form method=\"post\" action=\"%s\">\n", esc(f.Action))
	for _, in := range f.Inputs {
		fmt.Fprintf(&b, "<input type=\"%s\" name=\"%s\" label=\"%s\"", esc(in.Type), esc(in.Name), esc(in.Label))
		if in.Value != "" {
			fmt.Fprintf(&b, " value=\"%s\"", esc(in.Value))
		}
		b.WriteString("/>\n")
	}
	if len(f.Groups) > 0 {
		b.WriteString(`<select name="group_list" label="Group:">` + "\n")
		for _, g := range f.Groups {
			fmt.Fprintf(&b, "<option>%s</option>\n", esc(g))
		}
		b.WriteString("</select>\n")
	}
	b.WriteString("</form>\n</auth>\n</config-auth>\n")
	return []byte(b.String())
}

// RenderSuccess renders the "complete" reply that ends a successful
// sign-in. sessionToken, if set, is sent as <session-token>; the gateway
// normally carries the session in the webvpn cookie instead.
func RenderSuccess(banner, sessionToken string) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString(`<config-auth client="vpn" type="complete" aggregate-auth-version="2">` + "\n")
	if sessionToken != "" {
		fmt.Fprintf(&b, "<session-token>%s</session-token>\n", esc(sessionToken))
	}
	b.WriteString(`<auth id="success">` + "\n")
	if banner != "" {
		fmt.Fprintf(&b, "<banner>%s</banner>\n", esc(banner))
	}
	b.WriteString("<message>Success</message>\n</auth>\n</config-auth>\n")
	return []byte(b.String())
}

// RenderLogout renders the reply to a logout message.
func RenderLogout() []byte {
	return []byte(header + `<config-auth client="vpn" type="complete" aggregate-auth-version="2"><logout>Logged out</logout></config-auth>` + "\n")
}

// RenderRefusal renders an auth-request with an error and no form: the
// way to end a sign-in the client cannot retry (an SSO refusal).
// openconnect prints the error and exits 1 (sso.md §5); a form here would
// make it prompt for fields the user cannot fill.
func RenderRefusal(title, errMsg string) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString(`<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">` + "\n")
	b.WriteString(`<auth id="main">` + "\n")
	fmt.Fprintf(&b, "<title>%s</title>\n<error>%s</error>\n", esc(title), esc(errMsg))
	b.WriteString("</auth>\n</config-auth>\n")
	return []byte(b.String())
}
