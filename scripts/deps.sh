#!/usr/bin/env bash
# Installs what the tests need, only when something is missing: the Debian
# packages the end-to-end tests drive (openconnect, ocproxy, ocserv, curl,
# unbound, ...) and a pinned staticcheck in ./bin. Idempotent and silent when
# everything is present. Under CI=true any failure is fatal; locally a failed
# install is a warning (the tests then fail or skip with the same hint).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

# v0.8.2 (2026.2.2): the staticcheck release that understands Go 1.26 syntax.
STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.8.2}

# Debian packages. gcc/libc6-dev: `go test -race` needs cgo. ocserv: the
# reference gateway internal/testinfra/testenv's self-test drives openconnect against.
# iputils-ping: the e2e tests ping through the tunnel (not on a fresh image).
# Podman and friends: the rootless deployment test (examples/podman).
# chromium: the status page is rendered headless (internal/daemon/health), and
# it is the user's browser in the SSO sign-in tests (internal/testinfra/ssobrowser).
# haproxy: the load balancer in front of a site's servers (PROXY protocol,
# failover; tunnel's site tests).
# etcd-server: the site store (internal/daemon/sitestore tests run a
# single-member etcd 3.4 on loopback, testenv.StartEtcd).
PKGS=(openconnect ocproxy ocserv curl iproute2 iptables unbound dnsutils jq
	gnutls-bin iperf3 python3 ca-certificates gcc libc6-dev iputils-ping
	podman uidmap slirp4netns passt fuse-overlayfs runc catatonit
	chromium haproxy etcd-server)
OPTIONAL_PKGS=(dnsperf) # installed when the distribution has it (bookworm does)

ci=false
case "${CI:-}" in true | TRUE | 1 | yes) ci=true ;; esac

warn() { echo "deps.sh: $*" >&2; }
fail() { # fatal under CI, a warning otherwise
	warn "$*"
	if $ci; then exit 1; fi
	failed=1
}
failed=0

installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }

has_candidate() { # the package exists in the configured apt sources
	local c
	c=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
	[ -n "$c" ] && [ "$c" != "(none)" ]
}

apt_packages() {
	if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
		fail "not a Debian/Ubuntu system: install by hand: ${PKGS[*]} ${OPTIONAL_PKGS[*]}"
		return 0
	fi
	local p need=() opt=()
	for p in "${PKGS[@]}"; do installed "$p" || need+=("$p"); done
	for p in "${OPTIONAL_PKGS[@]}"; do
		installed "$p" && continue
		# With package lists present, an optional package they lack is skipped
		# without an apt-get update on every run.
		if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && ! has_candidate "$p"; then
			warn "optional package $p not available here; skipped"
			continue
		fi
		opt+=("$p")
	done
	[ ${#need[@]} -gt 0 ] || [ ${#opt[@]} -gt 0 ] || return 0

	local sudo=()
	if [ "$(id -u)" != 0 ]; then
		if command -v sudo >/dev/null; then
			sudo=(sudo)
			# no stdin under CI: never wait for a password prompt
			if $ci || ! [ -t 0 ]; then sudo=(sudo -n); fi
		else
			echo "deps.sh: not root and no sudo; as root run:" >&2
			echo "  apt-get update && apt-get install -y ${need[*]} ${opt[*]}" >&2
			exit 1
		fi
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo[@]}" apt-get update -qq >/dev/null; then
		fail "apt-get update failed; install by hand: ${need[*]} ${opt[*]}"
		return 0
	fi
	for p in "${opt[@]}"; do
		if has_candidate "$p"; then need+=("$p"); else warn "optional package $p not available here; skipped"; fi
	done
	[ ${#need[@]} -gt 0 ] || return 0
	echo "deps.sh: installing ${need[*]}" >&2
	if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
		fail "apt-get install failed: ${need[*]}"
		return 0
	fi
	# Installing ocserv on a systemd host starts a system-wide ocserv on :443;
	# the tests run their own in a namespace, so switch the service off.
	if [[ " ${need[*]} " == *" ocserv "* ]] && [ -d /run/systemd/system ]; then
		"${sudo[@]}" systemctl disable --now ocserv.service ocserv.socket >/dev/null 2>&1 || true
	fi
}

staticcheck_bin() {
	local bin=$root/bin/staticcheck
	if [ -x "$bin" ] && "$bin" -version 2>/dev/null | grep -qF "(${STATICCHECK_VERSION#v})"; then
		return 0
	fi
	if ! command -v go >/dev/null; then
		fail "go not in PATH: cannot install staticcheck"
		return 0
	fi
	mkdir -p "$root/bin"
	if ! GOBIN=$root/bin GOFLAGS=-buildvcs=false go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; then
		fail "go install staticcheck@$STATICCHECK_VERSION failed"
	fi
}

apt_packages
staticcheck_bin
if [ "$failed" = 1 ]; then
	warn "some prerequisites are missing (see above); tests needing them will fail (or skip with -short)"
fi
exit 0
