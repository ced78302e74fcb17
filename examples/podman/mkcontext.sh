#!/bin/sh
# Prepares a `podman build` context for examples/podman/Containerfile:
#   DIR/Containerfile      this directory's Containerfile
#   DIR/underpass          static binary (CGO_ENABLED=0 -trimpath) of ./examples/standalone
#   DIR/ca-certificates.crt  the host's CA bundle (outbound TLS from a scratch image)
#   DIR/state/             empty; becomes /var/lib/underpass owned by 65532
#
#   examples/podman/mkcontext.sh DIR && podman build -t localhost/underpass:latest DIR
#
# Needs Go (run it where the source is; the image can be built elsewhere).
# GOARCH may be set to cross-build (e.g. GOARCH=arm64).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 CONTEXT_DIR" >&2; exit 2; }
out=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca" ] || { echo "$0: $ca missing: apt-get install ca-certificates (or set CA_BUNDLE)" >&2; exit 1; }

mkdir -p "$out/state"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out/underpass" ./examples/standalone)
cp "$here/Containerfile" "$out/Containerfile"
cp "$ca" "$out/ca-certificates.crt"
chmod 0755 "$out/underpass" "$out/state"
chmod 0644 "$out/Containerfile" "$out/ca-certificates.crt"
echo "context ready: podman build -t localhost/underpass:latest $out"
