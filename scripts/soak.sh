#!/usr/bin/env bash
# The fault soak of #11 (benches/soak.rs): the release daemon on loopback under repeated
# faults (CEM SIGKILLs, Modbus device and mosquitto restarts, gateway SIGKILLs with a
# SunSpec limit active, a SIGSTOPped CEM, a full disk), printing counts and times.
#
# Bounded: SOAK_TIMEOUT seconds (default 1500) for the whole run. Needs root (the full
# disk is a tmpfs it mounts), mosquitto and the Python venv (scripts/test.sh's peers).
# Counts: SOAK_CEM_KILLS, SOAK_MODBUS_RESTARTS, SOAK_GATEWAY_KILLS,
# SOAK_BROKER_RESTARTS, SOAK_REVERT_S (see benches/soak.rs). The daemons' and peers'
# logs go to SOAK_LOG (default <target dir>/soak.log); the counts to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

export S2GW_TEST_PYTHON="${S2GW_TEST_PYTHON:-$PWD/.venv/bin/python}"
export S2GW_SHARED="${S2GW_SHARED:-$(cd .. && pwd)/shared}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
log="${SOAK_LOG:-$target/soak.log}"

cargo build --release --locked --bin s2gw
# The bench profile is the release profile: the daemon it runs is target/release/s2gw.
cargo bench --locked --bench soak --no-run
echo "soak: logs in $log" >&2
timeout --signal=TERM --kill-after=30 "${SOAK_TIMEOUT:-1500}" \
    cargo bench --locked --bench soak 2>"$log"
