#!/usr/bin/env bash
# Builds .venv-ha with a real Home Assistant Core for tests/e2e_homeassistant.rs. Idempotent:
# reinstalls only when this script changed since the last successful install (the pins live
# here). Home Assistant needs its own interpreter (2025.4 requires Python >= 3.13, the peers'
# .venv runs on the system's python3), so it gets its own venv.
#
# 2025.4.4 is the newest release whose Requires-Python the Python 3.13.0 of this machine
# satisfies (`pip index versions homeassistant` under 3.13.0 lists no later one; under
# pyenv's 3.12.1 the newest is 2025.1.4). Home Assistant's own package_constraints.txt, taken
# from the wheel, pins every transitive dependency: without it pip backtracks for ever.
set -euo pipefail
cd "$(dirname "$0")/.."

ha_version=2025.4.4
# The integrations the test loads beyond core's own dependencies: mqtt's client library,
# and the frontend (without it Home Assistant starts in recovery mode).
extra=(paho-mqtt==2.1.0 home-assistant-frontend==20250411.0)

venv=.venv-ha
stamp=$venv/.ha-peer.sha256
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -x $venv/bin/hass ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

# A Python >= 3.13: on PATH, else pyenv's newest 3.13.
python=
for candidate in python3.13 "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 2>/dev/null | sort -V | tail -1)"; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null \
    && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "ha-peer.sh: no Python >= 3.13 found (PATH or pyenv); Home Assistant $ha_version needs one" >&2
  exit 1
fi

rm -rf $venv
"$python" -m venv $venv
pip=($venv/bin/pip --quiet --disable-pip-version-check)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"${pip[@]}" download --no-deps "homeassistant==$ha_version" -d "$wheels"
$venv/bin/python - "$wheels"/homeassistant-$ha_version-*.whl > "$wheels/constraints.txt" <<'PY'
import sys, zipfile
sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read("homeassistant/package_constraints.txt").decode())
PY
"${pip[@]}" install -c "$wheels/constraints.txt" "$wheels"/homeassistant-$ha_version-*.whl "${extra[@]}"
echo "$want" > "$stamp"
