#!/usr/bin/env bash
# The reliability campaign: COUNT inputs per target (default 1,000,000) with seed SEED
# (default 1), each target split into JOBS shards (default 4) of consecutive input
# indices run side by side (the Modbus and MQTT targets wait on sockets more than they
# compute). Prints each shard's report; exits non-zero if any shard found anything.
#
#   scripts/fuzz-campaign.sh [target ...]      # default: every target
#   COUNT=100000 JOBS=2 scripts/fuzz-campaign.sh s2-rm
set -euo pipefail
cd "$(dirname "$0")/.."

count=${COUNT:-1000000}
seed=${SEED:-1}
jobs=${JOBS:-4}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(s2-edge s2-rm modbus mqtt ble config)

cargo build --release --locked -p s2gw-fuzz
runner=${CARGO_TARGET_DIR:-target}/release/s2gw-fuzz
crashes=${CARGO_TARGET_DIR:-target}/fuzz-crashes
per=$(( (count + jobs - 1) / jobs ))
status=0
for target in "${targets[@]}"; do
  pids=()
  for ((j = 0; j < jobs; j++)); do
    first=$(( j * per ))
    n=$(( first + per > count ? count - first : per ))
    [ "$n" -le 0 ] && continue
    "$runner" "$target" --seed "$seed" --first "$first" --count "$n" --crashes "$crashes" \
      > "$crashes-$target-$j.out" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  for ((j = 0; j < jobs; j++)); do
    [ -f "$crashes-$target-$j.out" ] && sed "s/^/[$target shard $j] /" "$crashes-$target-$j.out"
  done
done
exit $status
