#!/bin/sh
# testenv wrapper for openconnect --script-tun: dumps the environment
# openconnect gives the script (INTERNAL_IP4_*, CISCO_*, VPNFD, ...),
# NUL-separated, to "$TESTENV_DUMP", then becomes ocproxy with our arguments.
dump=${TESTENV_DUMP:?TESTENV_DUMP not set}
env -0 >"$dump.tmp" && mv -f "$dump.tmp" "$dump"
echo "${reason:-script-tun}" >>"$dump.reasons"
exec ocproxy "$@"
