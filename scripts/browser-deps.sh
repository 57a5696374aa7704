#!/usr/bin/env bash
# The web UI test's browser driver: playwright-core, pinned in tests/browser/package.json
# and package-lock.json, installed into tests/browser/node_modules (ignored by git) when
# missing. It drives Debian's chromium (scripts/system-deps.sh); it downloads no browser.
set -euo pipefail
cd "$(dirname "$0")/../tests/browser"
if [ -f node_modules/playwright-core/package.json ] &&
  grep -q '"version": "1.65.1"' node_modules/playwright-core/package.json; then
  exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
