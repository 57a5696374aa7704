#!/usr/bin/env bash
# Builds .venv with the Python test peers listed in scripts/python-peers.txt. Idempotent:
# reinstalls only when the list changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

list=scripts/python-peers.txt
stamp=.venv/.python-peers.sha256
want=$(sha256sum "$list" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r "$list"
echo "$want" > "$stamp"
