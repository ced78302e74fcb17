// Command ssobrowser is the user's browser in SSO tests: openconnect runs
// it as --external-browser=PROG with the login URL as its only argument
// (shared/docs/sso.md §3). It drives headless Chromium (chromedp) through
// the identity provider's login page (Dex's local password form) and waits
// until the browser has been sent through the client's listener to the
// gateway's "sign-in finished" page.
//
// openconnect shares its stdout with PROG and does not wait for it, so
// nothing is printed: progress and errors go to $UNDERPASS_SSO_LOG.
//
// Environment: UNDERPASS_SSO_USER and UNDERPASS_SSO_PASSWORD (the IdP
// account), UNDERPASS_SSO_LOG (log file), UNDERPASS_CHROMIUM (browser
// path; default chromium on PATH), UNDERPASS_SSO_DENY (if set, e.g.
// "access_denied": the user cancels at the IdP instead of signing in).
//
// Cancelling: Dex's login page has no cancel button and its approval
// page's refusal renders an error page instead of answering the client,
// so at the login page the browser is sent where an IdP sends a user who
// cancels (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6): the
// authorize request's redirect_uri with error=<UNDERPASS_SSO_DENY>,
// error_description and the authorize request's state, in the same browser
// (so with the gateway's state cookie).
package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// timeout bounds the whole browser leg: Dex answers in milliseconds and
// Chromium starts in a few seconds on a loaded 2-core machine.
const timeout = 90 * time.Second

func main() {
	log := io.Discard
	if p := os.Getenv("UNDERPASS_SSO_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			defer f.Close()
			log = f
		}
	}
	if len(os.Args) != 2 {
		fmt.Fprintf(log, "ssobrowser: want one argument (the URL), got %q\n", os.Args[1:])
		os.Exit(2)
	}
	if err := run(os.Args[1], log); err != nil {
		fmt.Fprintf(log, "ssobrowser: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(log, "ssobrowser: done")
}

func run(url string, log io.Writer) error {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.NoSandbox, // tests run as root, where Chromium's sandbox refuses to start
		chromedp.Flag("ignore-certificate-errors", true), // the test gateway's certificate is self-signed
		chromedp.Flag("disable-gpu", true),
	)
	if p := os.Getenv("UNDERPASS_CHROMIUM"); p != "" {
		opts = append(opts, chromedp.ExecPath(p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	// The authorize request (the gateway's redirect to the IdP) carries
	// redirect_uri and state; a cancel answers it.
	var mu sync.Mutex
	var authorize string
	if err := chromedp.Listen(bctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok && e.Request != nil && strings.Contains(e.Request.URL, "redirect_uri=") {
			mu.Lock()
			if authorize == "" {
				authorize = e.Request.URL
			}
			mu.Unlock()
		}
	}); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	deny := os.Getenv("UNDERPASS_SSO_DENY")

	fmt.Fprintf(log, "ssobrowser: open %s\n", url)
	err := chromedp.Do(bctx, chromedp.Navigate(url))
	if err != nil && strings.Contains(err.Error(), "ERR_NETWORK_CHANGED") {
		// The namespace's addresses changed under the page load; a user
		// would reload, and so does this stand-in, once.
		fmt.Fprintf(log, "ssobrowser: %v; reloading\n", err)
		time.Sleep(time.Second)
		err = chromedp.Do(bctx, chromedp.Navigate(url))
	}
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	// Either the IdP's login page appears, or (a refusal before the IdP,
	// e.g. an expired link) the gateway sends the browser straight to the
	// client's listener, which redirects to the "finished" page.
	signedIn := false
	for {
		loc, err := chromedp.Run(bctx, chromedp.Location())
		if err != nil {
			return fmt.Errorf("waiting for the next page: %w", err)
		}
		if strings.Contains(loc, "/sso/done") {
			fmt.Fprintf(log, "ssobrowser: finished at %s\n", loc)
			return nil
		}
		if !signedIn {
			form, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector('input[name="login"]') !== null`))
			if err == nil && form && deny != "" {
				mu.Lock()
				a := authorize
				mu.Unlock()
				back, err := cancelURL(a, deny)
				if err != nil {
					return err
				}
				fmt.Fprintf(log, "ssobrowser: cancel at %s: back to %s\n", loc, back)
				if err := chromedp.Do(bctx, chromedp.Navigate(back)); err != nil {
					return fmt.Errorf("cancel: %w", err)
				}
				signedIn = true
			} else if err == nil && form {
				if err := chromedp.Do(bctx,
					chromedp.SendKeys(chromedp.CSS(`input[name="login"]`), os.Getenv("UNDERPASS_SSO_USER")),
					chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), os.Getenv("UNDERPASS_SSO_PASSWORD")),
					chromedp.Submit(chromedp.CSS(`input[name="password"]`)),
				); err != nil {
					return fmt.Errorf("login page: %w", err)
				}
				fmt.Fprintf(log, "ssobrowser: signed in at %s\n", loc)
				signedIn = true
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("never reached the finished page (last at %s)", loc)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cancelURL is where an IdP sends the browser of a user who cancels the
// authorize request authorize: its redirect_uri with error=code (e.g.
// access_denied), a description and its state.
func cancelURL(authorize, code string) (string, error) {
	u, err := url.Parse(authorize)
	if err != nil || authorize == "" {
		return "", fmt.Errorf("no authorize request seen (%q)", authorize)
	}
	q := u.Query()
	back, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || back.Scheme == "" || q.Get("state") == "" {
		return "", fmt.Errorf("authorize request without redirect_uri or state: %s", authorize)
	}
	back.RawQuery = url.Values{"error": {code}, "error_description": {"The user cancelled the sign-in"}, "state": {q.Get("state")}}.Encode()
	return back.String(), nil
}
