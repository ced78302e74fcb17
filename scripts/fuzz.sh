#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s).
# go test -fuzz takes one target in one package, so discover them with -list.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZTIME=${FUZZTIME:-30s}
n=0
for pkg in $(go list ./...); do
	list=$(go test -list '^Fuzz' -run '^$' "$pkg") # a build failure stops the run
	for target in $(grep '^Fuzz' <<<"$list" || true); do
		echo "== $pkg $target ($FUZZTIME)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz.sh: $n fuzz targets run"
