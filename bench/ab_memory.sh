#!/usr/bin/env bash
# Peak memory and wall time of two builds side by side on the GPU machine: the 16-layer
# Qwen3-30B-A3B-shaped BF16 model and the DeepSeek-V3-shaped FP8 layer, warm, on cuda and cpu,
# the FP8 layer also under --max-memory 1GiB; two rounds, interleaved. Run from the repository
# root with release binaries in .device/ (synth and the two builds).
#
#   bash bench/ab_memory.sh .device/shardquant .device/shardquant-before
set -euo pipefail
NEW=${1:?usage: bench/ab_memory.sh NEW_BINARY OLD_BINARY}
OLD=${2:?usage: bench/ab_memory.sh NEW_BINARY OLD_BINARY}
W=${BENCH_DIR:-/tmp/sqbench}
mkdir -p "$W"
C=$W/qwen3-30b-a3b-shaped-16
F=$W/deepseek-v3-fp8-slice-1
[ -d "$C" ] || .device/synth "$C" 16 2048 128 768 > /dev/null
[ -d "$F" ] || .device/synth --deepseek-fp8 "$F" 1 > /dev/null
one() { # model checkpoint binary device [extra...]
  local name=$1 ck=$2 bin=$3 dev=$4
  shift 4
  rm -rf "$W/o"
  cat "$ck"/*.safetensors > /dev/null
  /usr/bin/time -f "%e %M" -o "$W/t.txt" "$bin" convert "$ck" "$W/o" --format nvfp4 \
    --stats "$ck.amax.safetensors" --device "$dev" -qq --report "$W/r.json" "$@"
  read -r wall kb < "$W/t.txt"
  echo "$name $(basename "$bin") $dev $*: wall $wall s, peak RSS $((kb / 1024)) MiB"
}
for bin in "$NEW" "$OLD"; do for dev in cuda cpu; do one BF16 "$C" "$bin" "$dev"; done; done
for _ in 1 2; do
  for bin in "$NEW" "$OLD"; do
    for dev in cuda cpu; do
      one FP8 "$F" "$bin" "$dev"
      one FP8 "$F" "$bin" "$dev" --max-memory 1GiB
    done
  done
done
for bin in "$NEW" "$OLD"; do for dev in cuda cpu; do one BF16 "$C" "$bin" "$dev"; done; done
rm -rf "$W/o"
