#!/usr/bin/env bash
# The whole test suite: unit, integration, end-to-end and interop tests, nothing skipped.
#
# The peers come first: Debian packages (scripts/system-deps.sh, installed when missing),
# the Python venv (scripts/python-peers.sh), Home Assistant's own venv
# (scripts/ha-peer.sh, once: about 2.5 minutes) and the browser driver
# (scripts/browser-deps.sh); the tests are told where they are.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/system-deps.sh
scripts/python-peers.sh
scripts/ha-peer.sh
scripts/browser-deps.sh
export S2GW_TEST_PYTHON="$PWD/.venv/bin/python"
export S2GW_TEST_HA_PYTHON="$PWD/.venv-ha/bin/python"
export S2GW_SHARED="${S2GW_SHARED:-$(cd .. && pwd)/shared}"

cargo test --workspace --all-targets --locked "$@"
