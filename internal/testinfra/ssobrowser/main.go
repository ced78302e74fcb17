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
// path; default chromium on PATH).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

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

	fmt.Fprintf(log, "ssobrowser: open %s\n", url)
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
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
			if err == nil && form {
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
