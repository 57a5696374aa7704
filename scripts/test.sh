#!/usr/bin/env bash
# The whole test suite: unit, integration, end-to-end and interop tests, nothing skipped.
#
# Interop tests need s2-python 0.11.1; this script builds the venv they use (once) and
# tells the tests where it is. Run .ci/run on a fresh machine to install system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/python-peers.sh
export S2GW_TEST_PYTHON="$PWD/.venv/bin/python"
export S2GW_SHARED="${S2GW_SHARED:-$(cd .. && pwd)/shared}"

cargo test --workspace --all-targets --locked "$@"
