#!/usr/bin/env bash
# Removes network namespaces that internal/testinfra/testenv left behind when a test
# process crashed or was killed before its cleanup ran. Only names in
# testenv's exact format (up-LABEL-XXXXXX: up to 8 [a-z0-9], 6 hex digits) are
# considered: other tools use "up-" names too (e.g. a podman e2e netns
# "up-ptest"). A namespace whose owning test process is still alive is left
# alone, so this is safe next to other test runs. --all ignores owners.
#
# Owners: testenv writes "PID STARTTIME" to /run/underpass-testenv/NAME.
set -uo pipefail
all=false
[ "${1:-}" = --all ] && all=true
owners=/run/underpass-testenv

command -v ip >/dev/null || PATH=$PATH:/usr/sbin:/sbin
command -v ip >/dev/null || exit 0 # no iproute2: nothing can have been created
[ "$(id -u)" = 0 ] || { ls /run/netns/up-* >/dev/null 2>&1 && echo "netns-clean.sh: stale test namespaces need root to remove" >&2; exit 0; }

alive() { # alive NAME: its owner process still runs
	local f=$owners/$1 pid st cur
	[ -r "$f" ] || return 1
	read -r pid st <"$f" || return 1
	[ -r "/proc/$pid/stat" ] || return 1
	cur=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20) # field 22: starttime
	[ "$cur" = "$st" ]
}

for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^up-[a-z0-9]{0,8}-[0-9a-f]{6}$'); do
	if ! $all && alive "$ns"; then continue; fi
	pids=$(ip netns pids "$ns" 2>/dev/null)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086
		kill -TERM $pids 2>/dev/null
		for _ in $(seq 1 30); do # up to 3 s grace
			[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
			sleep 0.1
		done
		pids=$(ip netns pids "$ns" 2>/dev/null)
		# shellcheck disable=SC2086
		[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
	fi
	ip netns del "$ns" 2>/dev/null && echo "netns-clean.sh: removed stale $ns" >&2
	rm -f "$owners/$ns"
done
# owner files whose namespace is gone
for f in "$owners"/up-*; do
	[ -e "$f" ] || continue
	[ -e "/run/netns/${f##*/}" ] || rm -f "$f"
done
exit 0
