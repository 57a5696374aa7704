#!/usr/bin/env bash
# Builds .venv with the Python test peers (s2-python's RM), pinned. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

want="s2-python==0.11.1"
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import s2python' 2>/dev/null; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "$want"
