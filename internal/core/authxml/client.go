package authxml

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// NewRequest returns a request of the client's side of the sign-in and
// CONNECT exchanges to url ("https://host:port/path"), with the headers
// openconnect sends on them (X-Transcend-Version, X-Aggregate-Auth) and
// userAgent; a non-nil body is XML. It panics on a malformed method or
// url (callers build both).
func NewRequest(method, url, userAgent string, body []byte) *http.Request {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		panic("authxml: " + err.Error())
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("X-Transcend-Version", "1")
	req.Header.Set("X-Aggregate-Auth", "1")
	if body != nil {
		req.Header.Set("Content-Type", "application/xml")
	}
	return req
}

// RoundTrip writes req on w as HTTP/1.1 and reads the response from br
// (the connection's reader, kept for what follows), with its body up to
// MaxMessageSize+1 bytes: a longer one is the gateway's mistake, which
// ParseServer then reports.
func RoundTrip(w io.Writer, br *bufio.Reader, req *http.Request) (*http.Response, []byte, error) {
	if err := req.Write(w); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxMessageSize+1))
	return resp, body, err
}

// RenderInit renders the client's first message ("init"), as openconnect
// sends it.
func RenderInit(deviceID, groupURL string) []byte {
	return []byte(fmt.Sprintf(header+`<config-auth client="vpn" type="init" aggregate-auth-version="2">`+
		`<version who="vpn">underpass</version><device-id>%s</device-id><group-access>%s</group-access></config-auth>`+"\n",
		esc(deviceID), esc(groupURL)))
}

// RenderReply renders an "auth-reply" with the form's username and
// password, echoing the server's opaque element.
func RenderReply(deviceID, opaque, username, password string) []byte {
	var b strings.Builder
	b.WriteString(header)
	b.WriteString(`<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2">`)
	fmt.Fprintf(&b, `<version who="vpn">underpass</version><device-id>%s</device-id>`, esc(deviceID))
	if opaque != "" {
		fmt.Fprintf(&b, `<opaque is-for="sg">%s</opaque>`, esc(opaque))
	}
	fmt.Fprintf(&b, `<auth><username>%s</username><password>%s</password></auth></config-auth>`+"\n", esc(username), esc(password))
	return []byte(b.String())
}

// ServerMessage is a parsed gateway <config-auth> reply.
type ServerMessage struct {
	Type    string // "auth-request" (a form) or "complete"
	Action  string // the form's post target
	Message string
	Error   string // the form's error line, e.g. "Login failed."
	Banner  string
	Opaque  string
	Inputs  []string // the form's input names
	// SSOLogin is <sso-v2-login>: the URL an SSO form sends the browser to.
	SSOLogin string
}

type xmlServer struct {
	XMLName xml.Name `xml:"config-auth"`
	Type    string   `xml:"type,attr"`
	Opaque  struct {
		Inner string `xml:",innerxml"`
	} `xml:"opaque"`
	Auth struct {
		Message string `xml:"message"`
		Error   string `xml:"error"`
		Banner  string `xml:"banner"`
		SSO     string `xml:"sso-v2-login"`
		Form    struct {
			Action string `xml:"action,attr"`
			Inputs []struct {
				Name string `xml:"name,attr"`
			} `xml:"input"`
		} `xml:"form"`
	} `xml:"auth"`
}

// ParseServer parses a gateway reply. It bounds size and nesting like
// ParseClient and returns ErrNotConfigAuth for other documents.
func ParseServer(body []byte) (*ServerMessage, error) {
	if len(body) > MaxMessageSize {
		return nil, &ParseError{Reason: fmt.Sprintf("message larger than %d bytes", MaxMessageSize)}
	}
	if !bytes.Contains(body, []byte("<config-auth")) {
		return nil, ErrNotConfigAuth
	}
	var x xmlServer
	d := xml.NewDecoder(bytes.NewReader(body))
	d.Strict = true
	if err := d.Decode(&x); err != nil {
		return nil, &ParseError{Reason: "malformed XML", Err: err}
	}
	m := &ServerMessage{
		Type: x.Type, Action: x.Auth.Form.Action, Message: strings.TrimSpace(x.Auth.Message),
		Error: strings.TrimSpace(x.Auth.Error), Banner: strings.TrimSpace(x.Auth.Banner),
		Opaque: strings.TrimSpace(x.Opaque.Inner), SSOLogin: strings.TrimSpace(x.Auth.SSO),
	}
	for i, in := range x.Auth.Form.Inputs {
		if i == maxInputs {
			break
		}
		m.Inputs = append(m.Inputs, in.Name)
	}
	return m, nil
}
