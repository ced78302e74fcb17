package tunnel_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/gwtest"
	"github.com/underpass/underpass/tunnel"
)

// TestDeviceCodeWithDex: tunnel.Client signs in with the OAuth2 device
// authorization grant against a real Dex (a public client), the user
// approving on Dex's own pages; the gateway admits the ID token (method
// "token", the IdP's user and groups), and a second sign-in reuses the
// token without asking the user again.
func TestDeviceCodeWithDex(t *testing.T) {
	const cli = "underpass-cli"
	d := dextest.StartWith(t, dextest.Options{PublicClient: cli})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // Dex polls every 5 s
	defer cancel()
	gw := gwtest.StartOIDC(t, d, cli, func(c *tunnel.Config) { c.Policy = &auth.Rules{AllowGroups: []string{"vpn-users"}} })
	var prompts atomic.Int32
	approved := make(chan error, 1)
	ts, err := tunnel.DeviceCodeTokenSource(tunnel.DeviceCodeConfig{Issuer: d.Issuer, ClientID: cli,
		Prompt: func(ctx context.Context, uri, code, complete string) error {
			prompts.Add(1)
			if uri == "" || code == "" || !strings.Contains(complete, code) {
				return fmt.Errorf("prompt: %q %q %q", uri, code, complete)
			}
			go func() { approved <- d.ApproveDevice(ctx, complete, code, dextest.Alice) }()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: gw.Addr, PinSHA256: gw.Pin, TokenSource: ts, Transport: tunnel.TransportTLS})
	if err != nil {
		t.Fatalf("dial: %v (user leg: %v)", err, <-approved)
	}
	defer c.Close()
	if err := <-approved; err != nil {
		t.Fatalf("user leg: %v", err)
	}
	ss := gw.Sessions()
	if len(ss) != 1 || ss[0].User != "alice" || ss[0].Method != "token" || !slices.Contains(ss[0].Groups, "vpn-users") {
		t.Fatalf("sessions: %+v", ss)
	}
	if tok, err := ts(ctx); err != nil || tok == "" || prompts.Load() != 1 {
		t.Fatalf("second sign-in: %v, %d prompts", err, prompts.Load())
	}
}

func TestDeviceCodeConfig(t *testing.T) {
	for _, cfg := range []tunnel.DeviceCodeConfig{
		{ClientID: "x", Prompt: func(context.Context, string, string, string) error { return nil }},
		{Issuer: "https://idp", Prompt: func(context.Context, string, string, string) error { return nil }},
		{Issuer: "https://idp", ClientID: "x"},
	} {
		if _, err := tunnel.DeviceCodeTokenSource(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
