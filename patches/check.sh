#!/usr/bin/env bash
# patches/check.sh — check that the carried patch list reproduces vendor/ exactly: take the
# pristine 0.9.1 crates from the commits that added them (unchanged, as vendor/README.md says),
# apply patches/*.patch in order, and compare with vendor/. Offline; a few seconds.
#
# After changing anything under vendor/, add the change as the next patch file (a description,
# then `git diff A B --relative=vendor -- vendor/<crate>`), and run this.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [[ $(git rev-parse --is-shallow-repository 2>/dev/null) == true ]]; then
	echo "patches/check.sh: skipped: a shallow clone lacks the commits that hold the pristine crates" >&2
	exit 0
fi
# The commits that added each crate unchanged.
pristine_core_proxy=$(git log --diff-filter=A --format=%H -- vendor/pingora-core/Cargo.toml | tail -1)
pristine_http=$(git log --diff-filter=A --format=%H -- vendor/pingora-http/Cargo.toml | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$pristine_core_proxy" vendor/pingora-core vendor/pingora-proxy | tar -x -C "$work"
git archive "$pristine_http" vendor/pingora-http | tar -x -C "$work"
for p in patches/*.patch; do
	(cd "$work/vendor" && git apply -p1 "$repo/$p") ||
		{ echo "patches/check.sh: $p does not apply" >&2; exit 1; }
done
status=0
for crate in pingora-core pingora-proxy pingora-http; do
	if ! diff -r -q -x Cargo.lock -x target "$work/vendor/$crate" "vendor/$crate"; then
		echo "patches/check.sh: vendor/$crate is not its pristine 0.9.1 plus patches/*.patch" >&2
		status=1
	fi
done
[[ $status == 0 ]] && echo "patches/check.sh: vendor/ is pristine pingora 0.9.1 plus the $(ls patches/*.patch | wc -l) patch files"
exit $status
