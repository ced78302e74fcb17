#!/bin/sh
# dnsperf-bench.sh: DNS proxy throughput and latency against unbound, in the
# same run on the same box (issue 4 "Performance"; target: proxy qps >=
# 0.8x unbound's on a cached workload).
#
#   scripts/dnsperf-bench.sh [SECONDS]      # default 10 s per measured run
#
# It starts unbound on 127.0.0.1 (a generated zone served the way a
# corporate recursive resolver would) and the dnsproxy bench server
# (dnsproxy/internal/benchserver) in front of it, warms both caches, then:
#   1. saturating load: dnsperf -c 4 -q 256 for SECONDS, alternating unbound
#      and proxy for ROUNDS rounds (default 3; the median is reported, so a
#      noisy neighbour on a shared box skews both alike): queries per
#      second, average latency, loss;
#   2. fixed load: dnsperf -Q $RATE -v for 5 s against each: p50 and p99
#      latency from the per-query log (dnsperf 2.10 prints no percentiles).
# Prints a markdown table. Needs: unbound, dnsperf (Debian packages), go.
# Both get every CPU: unbound num-threads = nproc with so-reuseport, the
# proxy PROXY_SOCKETS (default nproc) SO_REUSEPORT sockets.
# Ports: UB_PORT (default 25353) and PROXY_PORT (default 25354).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-10}
rate=${RATE:-20000}      # fixed-load rate: well below either server's capacity here
names=${NAMES:-1000}     # distinct names in the workload: all fit both caches
rounds=${ROUNDS:-3}
px_sockets=${PROXY_SOCKETS:-$(nproc)} # like unbound's so-reuseport with one thread per CPU
ub_port=${UB_PORT:-25353}
px_port=${PROXY_PORT:-25354}

need() {
	command -v "$1" >/dev/null 2>&1 || { echo "dnsperf-bench: $1 not found: apt-get install -y $2" >&2; exit 1; }
}
need dnsperf dnsperf
need go golang
unbound=$(command -v unbound || echo /usr/sbin/unbound)
[ -x "$unbound" ] || { echo "dnsperf-bench: unbound not found: apt-get install -y unbound" >&2; exit 1; }

work=$(mktemp -d)
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Zone and query file.
{
	echo '$ORIGIN bench.example.'
	echo '@ 3600 IN SOA ns hostmaster 1 3600 600 86400 3600'
	echo '@ 3600 IN NS ns'
	echo 'ns 3600 IN A 10.9.0.1'
	i=0
	while [ $i -lt "$names" ]; do
		echo "h$i 3600 IN A 10.9.$((i / 250)).$((i % 250 + 1))"
		i=$((i + 1))
	done
} >"$work/bench.zone"
i=0
while [ $i -lt "$names" ]; do
	echo "h$i.bench.example A"
	i=$((i + 1))
done >"$work/queries"

cat >"$work/unbound.conf" <<EOF
server:
	interface: 127.0.0.1
	port: $ub_port
	do-daemonize: no
	chroot: ""
	username: ""
	directory: "$work"
	pidfile: "$work/unbound.pid"
	use-syslog: no
	logfile: ""
	verbosity: 0
	do-ip6: no
	num-threads: $(nproc)
	so-reuseport: yes
	module-config: "iterator"
	access-control: 127.0.0.0/8 allow
	local-zone: "." refuse
	local-zone: "bench.example." transparent
auth-zone:
	name: "bench.example."
	zonefile: "$work/bench.zone"
	for-downstream: no
	for-upstream: yes
	fallback-enabled: no
remote-control:
	control-enable: no
EOF
"$unbound" -d -c "$work/unbound.conf" 2>"$work/unbound.log" &
pids="$pids $!"

(cd "$here" && go build -o "$work/benchserver" ./dnsproxy/internal/benchserver)
"$work/benchserver" -listen "127.0.0.1:$px_port" -sockets "$px_sockets" -upstream "127.0.0.1:$ub_port" >"$work/benchserver.out" 2>"$work/benchserver.err" &
pids="$pids $!"

# Wait (bounded: 10 s) until both answer.
ready() { dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 h0.bench.example A 2>/dev/null | grep -q '^10\.'; }
n=0
until ready "$ub_port" && ready "$px_port"; do
	n=$((n + 1))
	[ $n -lt 50 ] || { echo "dnsperf-bench: servers not ready" >&2; cat "$work"/*.log "$work"/benchserver.err >&2; exit 1; }
	sleep 0.2
done

# Warm both caches: one pass through the proxy reaches unbound too.
dnsperf -s 127.0.0.1 -p "$px_port" -d "$work/queries" -n 1 >/dev/null 2>&1

load() { # port -> "qps avg_ms lost_pct"
	dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -l "$secs" -c 4 -q 256 2>&1 | awk '
		/Queries per second:/ { qps = $4 }
		/Queries lost:/ { lost = $4; gsub(/[()%]/, "", lost) }
		/Average Latency/ { avg = $4 * 1000 }
		END { printf "%.0f %.3f %s\n", qps, avg, lost }'
}
pct() { # port -> "p50_ms p99_ms"
	dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -l 5 -Q "$rate" -v 2>/dev/null |
		awk '/^> / { print $NF * 1000 }' | sort -n | awk '
		{ v[NR] = $1 }
		END { if (NR == 0) { print "- -"; exit }
		      printf "%.3f %.3f\n", v[int(NR * 0.50) + (NR * 0.50 > int(NR * 0.50))], v[int(NR * 0.99) + (NR * 0.99 > int(NR * 0.99))] }'
}

r=0
: >"$work/ub.rounds"
: >"$work/px.rounds"
while [ $r -lt "$rounds" ]; do
	load "$ub_port" >>"$work/ub.rounds"
	load "$px_port" >>"$work/px.rounds"
	r=$((r + 1))
done
ub_pct=$(pct "$ub_port")
px_pct=$(pct "$px_port")

# The median round by qps, whole line (qps avg lost).
pick() { sort -n "$1" | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
ub_load=$(pick "$work/ub.rounds")
px_load=$(pick "$work/px.rounds")
set -- $ub_load; ub_qps=$1; ub_avg=$2; ub_lost=$3
set -- $px_load; px_qps=$1; px_avg=$2; px_lost=$3
set -- $ub_pct; ub_p50=$1; ub_p99=$2
set -- $px_pct; px_p50=$1; px_p99=$2
ratio=$(awk -v a="$px_qps" -v b="$ub_qps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')

echo "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }'), $("$unbound" -V 2>/dev/null | awk 'NR == 1 { print "unbound", $2 }'), $(nproc) CPUs, $names cached names, median of $rounds alternating ${secs} s saturating runs (-c 4 -q 256), p50/p99 at ${rate} qps for 5 s"
echo
echo "| target | qps | avg latency (ms) | lost % | p50 (ms) @${rate} qps | p99 (ms) @${rate} qps |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| unbound direct | $ub_qps | $ub_avg | $ub_lost | $ub_p50 | $ub_p99 |"
echo "| dnsproxy (cached) | $px_qps | $px_avg | $px_lost | $px_p50 | $px_p99 |"
echo
echo "proxy/unbound qps ratio: $ratio (target >= 0.80); rounds (qps): unbound $(awk '{ printf "%s ", $1 }' "$work/ub.rounds")/ proxy $(awk '{ printf "%s ", $1 }' "$work/px.rounds")"
