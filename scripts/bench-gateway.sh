#!/bin/sh
# Starts underpass as the candidate gateway of ../shared/bench/compare.sh.
# compare.sh runs this inside its oc-gw namespace with BENCH_* set; we turn
# those into a config file and exec the binary (built by `make build`).
#
#   ../shared/bench/compare.sh -- scripts/bench-gateway.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${UNDERPASS_BIN:-$here/bin/underpass}
[ -x "$bin" ] || { echo "bench-gateway: $bin missing: run 'make build' first" >&2; exit 1; }
: "${BENCH_LISTEN:?} ${BENCH_CERT:?} ${BENCH_KEY:?} ${BENCH_USER:?} ${BENCH_PASS:?} ${BENCH_POOL:?} ${BENCH_ROUTE:?} ${BENCH_WORK:?}"
cfg=$BENCH_WORK/underpass.yaml
# bcrypt cost 5 (~3 ms here) is about the work of ocserv's ocpasswd default
# (SHA-512 crypt, 5000 rounds), so sign-in costs both gateways alike; cost 10,
# the hash-password default, alone adds ~90 ms to every connect on this CPU.
hash=$(printf '%s\n' "$BENCH_PASS" | "$bin" hash-password -cost "${UNDERPASS_BCRYPT_COST:-5}")
cat >"$cfg" <<EOC
listen: "$BENCH_LISTEN"
tls: {cert: "$BENCH_CERT", key: "$BENCH_KEY"}
pool: "$BENCH_POOL"
split_include: ["$BENCH_ROUTE"]
mtu: ${UNDERPASS_MTU:-16000}
demo_page: false
users:
  - {name: "$BENCH_USER", password_hash: "$hash"}
log: {level: ${UNDERPASS_LOG_LEVEL:-info}}
EOC
exec "$bin" serve -config "$cfg"
