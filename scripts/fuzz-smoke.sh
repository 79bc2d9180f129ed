#!/usr/bin/env bash
# Runs every fuzz target of the module for a short time each, one package
# and target at a time, and fails if any of them fails (a crash, a property
# violation, or a target that `go test -fuzz` could not find).
#
#   FUZZ_SMOKE_TIME  how long each target runs (default 3s; `make fuzz` sets 30s)
#   FUZZ_PARALLEL    fuzzing workers per target (default 1, gentle on a
#                    shared machine; empty means go's default, GOMAXPROCS)
#   FUZZ_TIMEOUT     go test -timeout per target (default 20m)
#   GO               the go command (default go)
#
# Targets are found by grepping for "func FuzzXxx(" in *_test.go files, so
# a new target is picked up without editing this script. Fuzz targets in
# files with build constraints are not supported: the run would not find
# them and fails loudly.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
time=${FUZZ_SMOKE_TIME:-3s}
parallel=${FUZZ_PARALLEL-1}
timeout=${FUZZ_TIMEOUT:-20m}

# "dir name" pairs, sorted, skipping what the go command skips.
targets=$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . \
	| sed -E 's#^\./##' \
	| grep -Ev '(^|/)(vendor|testdata|\.[^/]*|_[^/]*)/' \
	| sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#\1 \2#; s#^[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#. \1#' \
	| sort -u)
if [ -z "$targets" ]; then
	echo "fuzz-smoke: no fuzz targets found" >&2
	exit 1
fi

args=(-run '^$' -fuzztime "$time" -timeout "$timeout")
if [ -n "$parallel" ]; then
	args+=(-parallel "$parallel")
fi

failed=()
count=0
start=$SECONDS
while read -r dir name; do
	count=$((count + 1))
	pkg="./$dir"
	[ "$dir" = . ] && pkg=.
	echo "fuzz-smoke: $pkg $name ($time)"
	log=$(mktemp)
	ok=1
	"$GO" test "${args[@]}" -fuzz "^${name}\$" "$pkg" </dev/null >"$log" 2>&1 || ok=0
	# Go's fuzzing engine sometimes ends a run whose time is up with a bare
	# "context deadline exceeded" (its worker did not answer in time on a
	# busy machine, seen right after it found a new interesting input) and
	# no failing input. That is not a finding: run the target again, up to
	# twice more (one retry was seen to time out the same way under the
	# load of a full make test). A real failure writes its input and fails
	# every time.
	for retry in 1 2; do
		if [ $ok = 1 ] || ! grep -q 'context deadline exceeded' "$log" || grep -q 'Failing input written' "$log"; then
			break
		fi
		cat "$log"
		echo "fuzz-smoke: $pkg $name: the fuzzing engine timed out without a finding; running it again ($retry of 2)"
		ok=1
		"$GO" test "${args[@]}" -fuzz "^${name}\$" "$pkg" </dev/null >"$log" 2>&1 || ok=0
	done
	if [ $ok = 0 ]; then
		cat "$log"
		failed+=("$pkg $name")
	elif grep -q 'no fuzz tests to fuzz\|no tests to run' "$log"; then
		cat "$log"
		echo "fuzz-smoke: $pkg $name was not run (build constraints?)" >&2
		failed+=("$pkg $name")
	fi
	rm -f "$log"
done <<<"$targets"

echo "fuzz-smoke: $count targets in $((SECONDS - start))s"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz-smoke: FAILED %s\n' "${failed[@]}" >&2
	echo "fuzz-smoke: a failing input is saved under the package's testdata/fuzz/<target>/; rerun it with go test -run '<target>/<file>'" >&2
	exit 1
fi
