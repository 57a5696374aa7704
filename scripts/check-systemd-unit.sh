#!/usr/bin/env bash
# The shipped unit must stay hardened: `systemd-analyze security` scores it (0 is fully
# locked down, 10 is nothing at all) and a score above the ceiling fails, naming it. It
# must also stay loadable: `systemd-analyze verify` on a copy whose ExecStart points at an
# existing binary (verify refuses a unit whose binary is not installed on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."

unit=${1:-systemd/s2gw.service}
ceiling=2.0

report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || true
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
if [ -z "$score" ]; then
  echo "$unit: no \"Overall exposure level\" line from systemd-analyze security:" >&2
  echo "$report" >&2
  exit 1
fi
if ! awk -v s="$score" -v c="$ceiling" 'BEGIN { exit !(s <= c) }'; then
  grep '✗' <<<"$report" >&2 || true
  echo "$unit: exposure level $score is above $ceiling (the exposed settings are above)" >&2
  exit 1
fi
echo "$unit: exposure level $score (ceiling $ceiling)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sed 's#^ExecStart=/usr/local/bin/s2gw #ExecStart=/bin/true #' "$unit" >"$scratch/$(basename "$unit")"
systemd-analyze verify --man=no "$scratch/$(basename "$unit")"
echo "$unit: systemd-analyze verify clean"
