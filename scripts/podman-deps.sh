#!/usr/bin/env bash
# Installs what the rootless Podman end-to-end test (examples/podman) needs,
# only when something is missing; silent when everything is present.
#
# Debian 12 (Podman 4.3.1): podman works rootless with these packages.
#   uidmap          newuidmap/newgidmap: the user namespace from /etc/subuid
#   slirp4netns     rootless networking (--network=slirp4netns, port_handler)
#   passt           pasta, the newer rootless network backend
#   fuse-overlayfs  overlay storage on kernels without rootless native overlay
#   runc            the OCI runtime: Debian 12's crun 1.8.1 fails on cgroup
#                   v1/hybrid hosts ("cgroups in hybrid mode not supported")
#   catatonit       the rootless pause process (a Recommends of podman)
#   openconnect ocproxy curl ca-certificates: the client side of the test and
#                   the CA bundle mkcontext.sh copies into the image
# Under CI=true a failure exits 1; otherwise it is a warning (the test then
# fails, or skips with -short, naming what is missing).
set -euo pipefail

PKGS=(podman uidmap slirp4netns passt fuse-overlayfs runc catatonit
	openconnect ocproxy curl ca-certificates)

ci=false
case "${CI:-}" in true | TRUE | 1 | yes) ci=true ;; esac
fail() {
	echo "podman-deps.sh: $*" >&2
	if $ci; then exit 1; fi
	exit 0
}

installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
	fail "not a Debian/Ubuntu system: install by hand: ${PKGS[*]}"
fi
need=()
for p in "${PKGS[@]}"; do installed "$p" || need+=("$p"); done
[ ${#need[@]} -gt 0 ] || exit 0

sudo=()
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || fail "not root and no sudo; as root run: apt-get update && apt-get install -y ${need[*]}"
	sudo=(sudo -n) # never wait for a password prompt
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null || fail "apt-get update failed; install by hand: ${need[*]}"
echo "podman-deps.sh: installing ${need[*]}" >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
	fail "apt-get install failed: ${need[*]}"
