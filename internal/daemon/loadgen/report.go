package loadgen

import (
	"fmt"
	"io"
	"time"
)

// WriteSummary writes res as the README's sizing table (sessions, flows,
// Mbit/s, setup rate, the gateway's RSS and CPU per 1,000 devices), then
// the reconnect storm and the errors per category.
func WriteSummary(w io.Writer, res *Result) {
	u := res.Gateway
	src := "not measured (give -gateway-pid or -metrics)"
	if u.Source != "" {
		src = "from " + u.Source
	}
	fmt.Fprintf(w, "underpass loadtest: %s sessions; gateway figures %s\n\n", res.Mode, src)
	fmt.Fprintln(w, "| sessions | flows | Mbit/s | setup/s | gateway RSS per 1,000 devices | gateway CPU per 1,000 devices, held | gateway CPU per setup |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	mbps, rss, idle, setup := "-", "-", "-", "-"
	if res.BulkTime > 0 {
		mbps = fmt.Sprintf("%.0f", res.Mbps())
	}
	if u.Source != "" && u.Sessions > 0 {
		switch {
		case u.RSSHeld == 0:
		case u.RSSHeld < u.RSSStart: // the heap shrank more than the sessions added: too few to measure
			rss = "below noise (RSS fell)"
		default:
			rss = fmt.Sprintf("%.1f MiB", u.RSSPerSession()*1000/(1<<20))
		}
		if u.Hold > 0 {
			idle = fmt.Sprintf("%.2f %% of a core", u.IdleCores()*100*1000/float64(u.Sessions))
		}
		setup = fmt.Sprintf("%.2f ms", float64(u.CPUPerSetup())/float64(time.Millisecond))
	}
	fmt.Fprintf(w, "| %d | %d | %s | %.0f | %s | %s | %s |\n\n", res.Sessions, res.Flows, mbps, res.SetupRate(), rss, idle, setup)
	fmt.Fprintf(w, "setup: %d sessions in %v\n", res.Sessions, res.SetupTime.Round(time.Millisecond))
	if res.BulkTime > 0 {
		fmt.Fprintf(w, "bulk: %d bytes echoed each way in %v\n", res.BulkBytes, res.BulkTime.Round(time.Millisecond))
	}
	if u.Source != "" {
		fmt.Fprintf(w, "gateway: RSS %d MiB before setup, %d MiB held; CPU %v in setup", u.RSSStart>>20, u.RSSHeld>>20, u.CPUSetup.Round(time.Millisecond))
		if u.Hold > 0 {
			fmt.Fprintf(w, ", %v over a %v hold", u.CPUHold.Round(time.Millisecond), u.Hold.Round(time.Millisecond))
		}
		fmt.Fprintln(w)
		if u.Err != "" {
			fmt.Fprintf(w, "gateway: a reading failed: %s\n", u.Err)
		}
	}
	if res.ReconnectTime > 0 || res.Errors.ReconnectFail > 0 {
		fmt.Fprintf(w, "reconnect storm: %d sessions back in %v (%.0f/s)\n", res.Reconnected, res.ReconnectTime.Round(time.Millisecond), res.ReconnectRate())
	}
	if res.Lost > 0 {
		fmt.Fprintf(w, "failover: %d of %d lost sessions back in %v (each: median %v, p99 %v, max %v)\n", res.Recovered, res.Lost,
			res.FailoverTime.Round(time.Millisecond), res.FailoverMedian.Round(time.Millisecond), res.FailoverP99.Round(time.Millisecond),
			res.FailoverMax.Round(time.Millisecond))
	}
	e := res.Errors
	fmt.Fprintf(w, "errors: sign-in refused %d, CONNECT failed %d, session dropped %d, reconnect failed %d, flow reset %d, flow failed %d, bytes lost %d\n",
		e.SignInRefused, e.ConnectFailed, e.SessionDropped, e.ReconnectFail, e.FlowReset, e.FlowFailed, e.BytesLost)
	if res.Interrupted != nil {
		fmt.Fprintf(w, "stopped early: %v\n", res.Interrupted)
	}
}
