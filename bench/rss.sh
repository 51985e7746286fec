#!/usr/bin/env bash
# Peak memory of `shardquant convert` as the model grows, with the I/O floor beside it.
#
#   bash bench/rss.sh            # the three default models below
#   bash bench/rss.sh 8:1024:16:512 64:1024:16:512   # LAYERS:HIDDEN:EXPERTS:MOE_INTERMEDIATE ...
#
# Defaults: a Qwen3-MoE-shaped synthetic model with 8 layers (0.5 GB BF16), the same with 64 layers
# (8x the tensors and bytes, 3.7 GB), and 8 layers with 4x larger tensors (same tensor count as the
# first, 1.9 GB). Peak RSS is measured by GNU time; the I/O floor is `cat` of the input shards
# (warm page cache, like the conversion that follows it). Set BENCH_DIR to keep the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(8:1024:16:512 64:1024:16:512 8:2048:16:1024)
work=${BENCH_DIR:-$(mktemp -d)}
cargo build --release --quiet --example synth
cargo build --release --quiet
bin=target/release/shardquant
printf '%-16s %8s %9s %12s %12s %9s %11s\n' model tensors input_GB peak_RSS_MB in_flight_MB wall_s wall/floor
for cfg in "${configs[@]}"; do
  IFS=: read -r layers hidden experts moe <<<"$cfg"
  ckpt="$work/synth-$layers-$hidden-$experts-$moe"
  [ -d "$ckpt" ] || target/release/examples/synth "$ckpt" "$layers" "$hidden" "$experts" "$moe"
  bytes=$(cat "$ckpt"/*.safetensors | wc -c)
  t0=$(date +%s.%N); cat "$ckpt"/*.safetensors >/dev/null; t1=$(date +%s.%N)
  floor=$(echo "$t1 - $t0" | bc -l)
  out="$work/out"; rm -rf "$out"
  /usr/bin/time -f '%M %e' -o "$work/time" "$bin" convert "$ckpt" "$out" --format nvfp4 \
    --stats "$ckpt.amax.safetensors" --max-memory 256MiB --quiet --report "$work/report.json"
  read -r kb wall <"$work/time"
  read -r tensors inflight < <(python3 -c "import json;r=json.load(open('$work/report.json'));print(r['counts']['output_tensors'], r['memory']['peak_in_flight_bytes']//2**20)")
  printf '%-16s %8s %9.2f %12.1f %12s %9.2f %11.2f\n' "$cfg" "$tensors" "$(echo "$bytes/1000000000" | bc -l)" \
    "$(echo "$kb/1024" | bc -l)" "$inflight" "$wall" "$(echo "$wall/($floor+0.001)" | bc -l)"
  rm -rf "$out"
done
[ -n "${BENCH_DIR:-}" ] || rm -rf "$work"
