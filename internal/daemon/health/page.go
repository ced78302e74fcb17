package health

import (
	"encoding/json"
	"html/template"
	"net/http"
)

// pageData is the status page's inline JSON (also served as /status.json).
type pageData struct {
	Report  Report   `json:"report"`
	History []Sample `json:"history"`
}

// Handler serves the status page at "/" and its data at "/status.json".
// The page is self-contained (no external assets): the data travels inline
// and the page's script draws the table and the SVG charts.
func (m *Monitor) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pageData{m.Report(), m.History()})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.Marshal(pageData{m.Report(), m.History()})
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		// Nothing on the page may load from elsewhere.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		_ = page.Execute(w, template.JS(b))
	})
	return mux
}

var page = template.Must(template.New("status").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Underpass status</title>
<meta http-equiv="refresh" content="60">
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
table{border-collapse:collapse;margin-bottom:24px;background:#fff}
td,th{padding:6px 12px;border-bottom:1px solid #e4e4e4;text-align:left}
td.lvl{font-weight:600;text-transform:capitalize}
.healthy td.lvl{color:#137333} .warning td.lvl{color:#b06000} .unhealthy td.lvl{color:#c5221f} .unknown td.lvl{color:#777}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600;text-transform:capitalize}
.badge.healthy{background:#137333} .badge.warning{background:#b06000} .badge.unhealthy{background:#c5221f} .badge.unknown{background:#777}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px}
.chart{background:#fff;border:1px solid #e4e4e4;padding:8px} .chart h2{font-size:14px;margin:0 0 4px}
svg{width:100%;height:140px} polyline{fill:none;stroke:#1a73e8;stroke-width:1.5} .axis{stroke:#ccc} text{font-size:10px;fill:#666}
</style></head><body>
<h1>Underpass gateway <span id="overall" class="badge"></span></h1>
<div class="sub" id="when"></div>
<table id="health"><thead><tr><th>Check</th><th>Value</th><th>Status</th></tr></thead><tbody></tbody></table>
<div class="charts" id="charts"></div>
<script id="data" type="application/json">{{.}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const ov = document.getElementById("overall");
ov.textContent = data.report.overall; ov.className = "badge " + data.report.overall;
document.getElementById("when").textContent = "Report of " + new Date(data.report.time).toLocaleString() +
  " · " + (data.history || []).length + " samples";
const tb = document.querySelector("#health tbody");
for (const c of data.report.checks) {
  const tr = document.createElement("tr"); tr.className = c.level;
  for (const [v, cls] of [[c.name, ""], [c.value, ""], [c.level, "lvl"]]) {
    const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.appendChild(td);
  }
  tb.appendChild(tr);
}
const NS = "http://www.w3.org/2000/svg";
const series = [["connections", "Connections", ""], ["cpu", "CPU", "%"], ["memory", "Memory", "%"],
                ["latency", "Latency through the gateway", "ms"], ["mbps", "Throughput", "Mbit/s"]];
const hist = data.history || [];
for (const [key, title, unit] of series) {
  const box = document.createElement("div"); box.className = "chart"; box.id = "chart-" + key;
  const h = document.createElement("h2"); h.textContent = title + (unit ? " (" + unit + ")" : ""); box.appendChild(h);
  const svg = document.createElementNS(NS, "svg"); svg.setAttribute("viewBox", "0 0 400 140");
  const pts = hist.filter(s => s[key] >= 0);
  const max = Math.max(1, ...pts.map(s => s[key]));
  const ts = pts.map(s => Date.parse(s.t));
  const t0 = ts.length ? Math.min(...ts) : 0, t1 = ts.length ? Math.max(...ts) : 1;
  const x = t => 30 + 360 * (t1 > t0 ? (Date.parse(t) - t0) / (t1 - t0) : 1);
  const y = v => 125 - 115 * v / max;
  const axis = document.createElementNS(NS, "line");
  axis.setAttribute("class", "axis"); axis.setAttribute("x1", 30); axis.setAttribute("x2", 390);
  axis.setAttribute("y1", 125); axis.setAttribute("y2", 125); svg.appendChild(axis);
  const label = document.createElementNS(NS, "text"); label.setAttribute("x", 0); label.setAttribute("y", 14);
  label.textContent = max.toFixed(max < 10 ? 1 : 0); svg.appendChild(label);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", pts.map(s => x(s.t).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" "));
  svg.appendChild(line); box.appendChild(svg);
  document.getElementById("charts").appendChild(box);
}
</script></body></html>
`))
