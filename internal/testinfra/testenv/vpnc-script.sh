#!/bin/sh
# testenv vpnc-script for openconnect's kernel-tun mode inside a test namespace.
# Configures only what the gateway pushed: tun address/MTU and split-include
# routes (a default route via the tun when none). Never touches DNS or
# /etc/resolv.conf. Every invocation dumps its whole environment, NUL-separated
# (values such as CISCO_BANNER may contain newlines), to "$TESTENV_DUMP.$reason";
# after a successful connect/reconnect also to "$TESTENV_DUMP", which the Go
# driver waits for. Failed ip commands are appended to "$TESTENV_DUMP.errors".
dump=${TESTENV_DUMP:?TESTENV_DUMP not set}
env -0 >"$dump.$reason.tmp" && mv -f "$dump.$reason.tmp" "$dump.$reason"
echo "$reason" >>"$dump.reasons"

try() { "$@" 2>>"$dump.errors" || echo "FAILED: $*" >>"$dump.errors"; }

case "$reason" in
connect | reconnect)
	try ip link set dev "$TUNDEV" up ${INTERNAL_IP4_MTU:+mtu "$INTERNAL_IP4_MTU"}
	[ -n "${INTERNAL_IP4_ADDRESS:-}" ] && try ip addr replace "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
	if [ -n "${INTERNAL_IP6_NETMASK:-}" ]; then
		try ip -6 addr replace "$INTERNAL_IP6_NETMASK" dev "$TUNDEV"
	elif [ -n "${INTERNAL_IP6_ADDRESS:-}" ]; then
		try ip -6 addr replace "$INTERNAL_IP6_ADDRESS/128" dev "$TUNDEV"
	fi
	n=${CISCO_SPLIT_INC:-0} i=0
	while [ "$i" -lt "$n" ]; do
		eval "a=\$CISCO_SPLIT_INC_${i}_ADDR l=\$CISCO_SPLIT_INC_${i}_MASKLEN"
		try ip route replace "$a/$l" dev "$TUNDEV"
		i=$((i + 1))
	done
	[ "$n" -eq 0 ] && [ -n "${INTERNAL_IP4_ADDRESS:-}" ] && try ip route replace default dev "$TUNDEV"
	n6=${CISCO_IPV6_SPLIT_INC:-0} i=0
	while [ "$i" -lt "$n6" ]; do
		eval "a=\$CISCO_IPV6_SPLIT_INC_${i}_ADDR l=\$CISCO_IPV6_SPLIT_INC_${i}_MASKLEN"
		try ip -6 route replace "$a/$l" dev "$TUNDEV"
		i=$((i + 1))
	done
	[ "$n6" -eq 0 ] && [ -n "${INTERNAL_IP6_NETMASK:-}${INTERNAL_IP6_ADDRESS:-}" ] && try ip -6 route replace default dev "$TUNDEV"
	env -0 >"$dump.tmp" && mv -f "$dump.tmp" "$dump"
	;;
disconnect)
	ip link set dev "$TUNDEV" down 2>/dev/null
	;;
esac
exit 0
