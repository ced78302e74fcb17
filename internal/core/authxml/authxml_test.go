package authxml

import (
	"encoding/xml"
	"errors"
	"strings"
	"testing"
)

// Messages as openconnect 9.01 sends them (auth.c).
const ocInit = `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2"><version who="vpn">v9.01-3</version><device-id>linux-64</device-id><capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities><group-access>https://vpn.example:8443</group-access></config-auth>`

const ocReply = `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2"><version who="vpn">v9.01-3</version><device-id>linux-64</device-id><session-token/><session-id/><opaque is-for="sg"><tunnel-group>default</tunnel-group></opaque><auth><username>alice</username><password>p&amp;ss&lt;word&gt;</password></auth><group-select>staff</group-select></config-auth>`

func TestParseClient(t *testing.T) {
	m, err := ParseClient([]byte(ocInit))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "init" || m.Version != "v9.01-3" || m.DeviceID != "linux-64" || m.GroupAccess != "https://vpn.example:8443" {
		t.Fatalf("init: %+v", m)
	}
	m, err = ParseClient([]byte(ocReply))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "auth-reply" || m.Username() != "alice" || m.Password() != "p&ss<word>" || m.GroupSelect != "staff" ||
		string(m.Opaque) != "<tunnel-group>default</tunnel-group>" {
		t.Fatalf("auth-reply: %+v opaque %q", m, m.Opaque)
	}
}

func TestParseClientErrors(t *testing.T) {
	tests := []struct {
		name, body string
		notConfig  bool
	}{
		{"empty", "", true},
		{"html", "<html><body>hi</body></html>", true},
		{"other root mentioning config-auth", "<foo>config-auth</foo>", true},
		{"malformed", `<config-auth type="init"><version>`, false},
		{"no type", `<config-auth client="vpn"></config-auth>`, false},
		{"entity", `<!DOCTYPE x [<!ENTITY e "boom">]><config-auth type="init"><version>&e;</version></config-auth>`, false},
		{"charset", `<?xml version="1.0" encoding="EBCDIC"?><config-auth type="init"/>`, false},
		{"too many inputs", `<config-auth type="auth-reply"><auth>` + strings.Repeat("<a>x</a>", maxInputs+1) + `</auth></config-auth>`, false},
		{"too large", `<config-auth type="init">` + strings.Repeat(" ", MaxMessageSize) + `</config-auth>`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseClient([]byte(tt.body))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("want *ParseError, got %v", err)
			}
			if got := errors.Is(err, ErrNotConfigAuth); got != tt.notConfig {
				t.Errorf("errors.Is(ErrNotConfigAuth) = %v, want %v (%v)", got, tt.notConfig, err)
			}
		})
	}
}

// TestRenderEscapes: hostile strings in every field stay text.
func TestRenderEscapes(t *testing.T) {
	evil := `</error><injected a="1"/>&"'`
	out := RenderAuthRequest(Form{
		Title: evil, Message: evil, Banner: evil, Error: evil, Action: evil, Opaque: evil,
		Inputs: []Input{{Type: "text", Name: evil, Label: evil, Value: evil}},
		Groups: []string{evil},
	})
	if strings.Contains(string(out), "<injected") {
		t.Fatalf("unescaped: %s", out)
	}
	var doc struct {
		Type string `xml:"type,attr"`
		Auth struct {
			ID    string `xml:"id,attr"`
			Error string `xml:"error"`
			Form  struct {
				Action string `xml:"action,attr"`
				Inputs []struct {
					Name  string `xml:"name,attr"`
					Value string `xml:"value,attr"`
				} `xml:"input"`
			} `xml:"form"`
		} `xml:"auth"`
		Opaque string `xml:"opaque"`
	}
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("rendered form does not parse: %v\n%s", err, out)
	}
	if doc.Type != "auth-request" || doc.Auth.ID != "main" || doc.Auth.Error != evil || doc.Auth.Form.Action != evil ||
		len(doc.Auth.Form.Inputs) != 1 || doc.Auth.Form.Inputs[0].Name != evil || doc.Opaque != evil {
		t.Fatalf("round trip lost data: %+v", doc)
	}
	s := RenderSuccess(evil, "tok")
	if strings.Contains(string(s), "<injected") || !strings.Contains(string(s), `<auth id="success">`) ||
		!strings.Contains(string(s), "<session-token>tok</session-token>") {
		t.Fatalf("success: %s", s)
	}
	if strings.Contains(string(RenderSuccess("", "")), "session-token") {
		t.Error("empty session token rendered")
	}
	if err := xml.Unmarshal(RenderLogout(), new(struct{})); err != nil {
		t.Errorf("logout: %v", err)
	}
}

func TestFormShape(t *testing.T) {
	out := string(RenderAuthRequest(Form{Action: "/auth", Inputs: []Input{
		{Type: "text", Name: "username", Label: "Username:"},
		{Type: "password", Name: "password", Label: "Password:"},
	}}))
	for _, want := range []string{
		`<config-auth client="vpn" type="auth-request" aggregate-auth-version="2">`,
		`<auth id="main">`, `<form method="post" action="/auth">`,
		`<input type="text" name="username" label="Username:"/>`,
		`<input type="password" name="password" label="Password:"/>`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in\n%s", want, out)
		}
	}
}

func FuzzParseClient(f *testing.F) {
	f.Add([]byte(ocInit))
	f.Add([]byte(ocReply))
	f.Add([]byte(`<config-auth type="x"><auth><a/><b>1</b></auth></config-auth>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseClient(b)
		if err == nil && (m.Type == "" || len(m.Inputs) > maxInputs) {
			t.Fatalf("accepted invalid message: %+v", m)
		}
	})
}

func TestClientMessagesRoundTrip(t *testing.T) {
	m, err := ParseClient(RenderReply("dev-1", "", "al<ice", "p&ss"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "auth-reply" || m.Username() != "al<ice" || m.Password() != "p&ss" || m.DeviceID != "dev-1" {
		t.Errorf("reply parsed as %+v", m)
	}
	m, err = ParseClient(RenderInit("dev-2", "https://gw/"))
	if err != nil || m.Type != "init" || m.GroupAccess != "https://gw/" {
		t.Errorf("init parsed as %+v, %v", m, err)
	}
}

func TestParseServer(t *testing.T) {
	form := RenderAuthRequest(Form{Action: "/auth", Error: "Login failed.", Inputs: []Input{{Type: "text", Name: "username"}, {Type: "password", Name: "password"}}})
	m, err := ParseServer(form)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "auth-request" || m.Action != "/auth" || m.Error != "Login failed." || len(m.Inputs) != 2 {
		t.Errorf("form parsed as %+v", m)
	}
	m, err = ParseServer(RenderSuccess("hello", ""))
	if err != nil || m.Type != "complete" || m.Banner != "hello" {
		t.Errorf("success parsed as %+v, %v", m, err)
	}
	for _, bad := range []string{"", "<html/>", "<config-auth><auth>", strings.Repeat("x", MaxMessageSize+1)} {
		if _, err := ParseServer([]byte(bad)); err == nil {
			t.Errorf("%.20q: no error", bad)
		}
	}
}

func FuzzParseServer(f *testing.F) {
	f.Add(RenderAuthRequest(Form{Action: "/auth", Inputs: []Input{{Type: "text", Name: "username"}}}))
	f.Add(RenderSuccess("b", "t"))
	f.Add([]byte("<config-auth type=\"x\"><auth><form><input name=\"a\"/></form></auth></config-auth>"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseServer(b)
		if err == nil && m == nil {
			t.Fatal("nil message without error")
		}
		if err == nil && len(m.Inputs) > maxInputs {
			t.Fatalf("%d inputs kept", len(m.Inputs))
		}
	})
}

// TestSSO: an openconnect 9.01 init's capabilities are read, and the SSO
// form carries what the CLI needs (sso.md §2): the login URL, browser
// mode "external" and a single sso-token input; a refusal has no form.
func TestSSO(t *testing.T) {
	m, err := ParseClient([]byte(`<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2"><version who="vpn">v9.01</version><device-id>linux-64</device-id>` +
		`<capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities>` +
		`<group-access>https://gw/</group-access></config-auth>`))
	if err != nil || !m.HasAuthMethod("single-sign-on-external-browser") || m.HasAuthMethod("password") {
		t.Fatalf("%+v %v", m, err)
	}
	doc := string(RenderAuthRequest(Form{Title: "t", Action: "/auth", Opaque: "op&aque",
		Inputs: []Input{{Type: "text", Name: "username"}}, // ignored for an SSO form
		SSO:    &SSOForm{Login: "https://vpn/sso/login?t=a&b", LoginFinal: "https://vpn/sso/done", TokenCookieName: "tc", ErrorCookieName: "ec"}}))
	for _, want := range []string{
		"<sso-v2-login>https://vpn/sso/login?t=a&amp;b</sso-v2-login>", "<sso-v2-login-final>https://vpn/sso/done</sso-v2-login-final>",
		"<sso-v2-token-cookie-name>tc</sso-v2-token-cookie-name>", "<sso-v2-error-cookie-name>ec</sso-v2-error-cookie-name>",
		"<sso-v2-browser-mode>external</sso-v2-browser-mode>", `<input type="sso" name="sso-token"></input>`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("missing %s in\n%s", want, doc)
		}
	}
	sm, err := ParseServer([]byte(doc))
	if err != nil || sm.SSOLogin != "https://vpn/sso/login?t=a&b" || len(sm.Inputs) != 1 || sm.Inputs[0] != "sso-token" || sm.Opaque != "op&amp;aque" {
		t.Fatalf("%+v %v", sm, err)
	}
	r := string(RenderRefusal("t", "Access denied: <no>"))
	if strings.Contains(r, "<form") || !strings.Contains(r, "<error>Access denied: &lt;no&gt;</error>") {
		t.Fatalf("refusal:\n%s", r)
	}
}
