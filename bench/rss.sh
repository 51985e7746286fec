#!/usr/bin/env bash
# Peak memory stays flat as the model grows: converts synthetic checkpoints of two depths
# (same layer shapes) and prints peak RSS, wall time, and both against the I/O floor.
#
#   bash bench/rss.sh [SMALL_LAYERS] [LARGE_LAYERS] [HIDDEN] [EXPERTS]
# Defaults: 8 and 64 layers of hidden 1024 with 16 experts (about 0.3 GB and 2.4 GB of BF16).
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-8}; large=${2:-64}; hidden=${3:-1024}; experts=${4:-16}
work=${BENCH_DIR:-$(mktemp -d)}
cargo build --release --quiet --example synth
cargo build --release --quiet
bin=target/release/shardquant
printf '%-8s %10s %12s %12s %10s %12s\n' layers input_GB peak_RSS_MB in_flight wall_s wall/floor
declare -A rss
for n in "$small" "$large"; do
  ckpt="$work/synth-$n"
  [ -d "$ckpt" ] || target/release/examples/synth "$ckpt" "$n" "$hidden" "$experts" 512
  bytes=$(du -cb "$ckpt"/*.safetensors | tail -1 | cut -f1)
  # I/O floor: read every input byte (warm cache, like the conversion below).
  t0=$(date +%s.%N); cat "$ckpt"/*.safetensors >/dev/null; t1=$(date +%s.%N)
  floor=$(echo "$t1 - $t0" | bc -l)
  rm -rf "$work/out-$n"
  /usr/bin/time -f '%M %e' -o "$work/time-$n" "$bin" convert "$ckpt" "$work/out-$n" --format nvfp4 \
    --stats "$ckpt.amax.safetensors" --max-memory 256MiB --quiet --report "$work/report-$n.json"
  read -r kb wall <"$work/time-$n"
  inflight=$(python3 -c "import json;print(json.load(open('$work/report-$n.json'))['memory']['peak_in_flight_bytes']//2**20)")
  rss[$n]=$kb
  printf '%-8s %10.2f %12.1f %10sMB %10.2f %12.2f\n' "$n" "$(echo "$bytes/1e9" | bc -l)" "$(echo "$kb/1024" | bc -l)" \
    "$inflight" "$wall" "$(echo "$wall/($floor+0.001)" | bc -l)"
  rm -rf "$work/out-$n"
done
printf 'peak RSS ratio %s/%s layers: %.2f (flat is ~1.0 while the model grew %sx)\n' "$large" "$small" \
  "$(echo "${rss[$large]}/${rss[$small]}" | bc -l)" "$((large / small))"
[ -n "${BENCH_DIR:-}" ] || rm -rf "$work"
