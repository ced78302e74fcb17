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
hash=$(printf '%s\n' "$BENCH_PASS" | "$bin" hash-password)
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
