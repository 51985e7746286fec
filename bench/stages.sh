#!/usr/bin/env bash
# Where a warm conversion spends its time, per stage, on the GPU machine (issue 13: measure
# before changing). Run from the repository root with release binaries in .device/ (shardquant,
# synth). One run, side by side: the write floor (dd of the output's size with fdatasync), the
# cached-read floor (cat of the input from the page cache), and shardquant warm on cuda and cpu
# with --report; prints wall seconds and the report's thread-seconds per stage.
set -euo pipefail
LAYERS=${1:-8}
WORK=${BENCH_DIR:-/tmp/sqbench}
CKPT=$WORK/qwen3-30b-a3b-shaped-$LAYERS
mkdir -p "$WORK"
[ -d "$CKPT" ] || .device/synth "$CKPT" "$LAYERS" 2048 128 768
AMAX=$CKPT.amax.safetensors
cat "$CKPT"/*.safetensors > /dev/null   # warm the page cache
in_bytes=$(cat "$CKPT"/*.safetensors | wc -c)
t0=$(date +%s.%N); cat "$CKPT"/*.safetensors > /dev/null; t1=$(date +%s.%N)
echo "input $((in_bytes / 1000000)) MB; cached read floor $(python3 -c "print(round($t1 - $t0, 2))") s"
# BINS: the binaries to compare side by side (default: .device/shardquant), two rounds interleaved.
BINS=${BINS:-.device/shardquant}
# FEW_CORES=1 adds runs pinned to 4 cores with --threads 4 (the issue's few-cores target).
CORES="all"
[ "${FEW_CORES:-0}" = 1 ] && CORES="all 4"
for round in 1 2; do
for cores in $CORES; do
for bin in $BINS; do
for device in cuda cpu; do
  out=$WORK/out-$device
  rm -rf "$out"
  pin=()
  [ "$cores" = 4 ] && pin=(taskset -c 0-3)
  extra=()
  [ "$cores" = 4 ] && extra=(--threads 4)
  t0=$(date +%s.%N)
  "${pin[@]}" "$bin" convert "$CKPT" "$out" --format nvfp4 --stats "$AMAX" --device "$device" -qq --report "$WORK/report-$device.json" "${extra[@]}"
  t1=$(date +%s.%N)
  out_bytes=$(cat "$out"/*.safetensors | wc -c)
  echo "round $round $(basename "$bin") $device cores=$cores: wall $(python3 -c "print(round($t1 - $t0, 2))") s, output $((out_bytes / 1000000)) MB"
  python3 bench/report_line.py "$WORK/report-$device.json"
done
done
done
done
out_bytes=$(cat "$WORK"/out-cpu/*.safetensors | wc -c)
t0=$(date +%s.%N); dd if=/dev/zero of="$WORK/floor.bin" bs=16M count=$((out_bytes / 16777216 + 1)) conv=fdatasync status=none; t1=$(date +%s.%N)
echo "write floor (dd conv=fdatasync of the output's size) $(python3 -c "print(round($t1 - $t0, 2))") s"
rm -f "$WORK/floor.bin"
