#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s).
# go test -fuzz takes one target in one package, so: find the packages whose
# tests declare a Fuzz function (cheap grep), list their targets with
# `go test -list`, and fuzz them one by one. A package that fails to build or
# a target that fails is reported; the run goes on and exits 1 at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZTIME=${FUZZTIME:-30s}
n=0 failed=()
dirs=$(grep -rlE --include='*_test.go' '^func Fuzz[A-Z0-9_]' . | grep -v '/testdata/' | xargs -r -n1 dirname | sort -u)
for dir in $dirs; do
	if ! list=$(go test -list '^Fuzz' -run '^$' "$dir" 2>&1); then
		echo "$list" >&2
		failed+=("$dir (build)")
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$list"); do
		echo "== $dir $target ($FUZZTIME)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$dir" || failed+=("$dir $target")
		n=$((n + 1))
	done
done
echo "fuzz.sh: $n fuzz targets run"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz.sh: FAILED: %s\n' "${failed[@]}" >&2
	exit 1
fi
