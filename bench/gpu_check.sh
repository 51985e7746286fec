#!/usr/bin/env bash
# The GPU machine's check of a build: every test that runs on the GPU, then (optionally) issue 13's
# targets bench. The binaries are built on the development machine into .device/ (the GPU
# machine has no cargo), then run there from the repository root.
#
#   bash bench/gpu_check.sh build    # here: release build, synth and the test binaries into .device/ (stripped)
#   bash bench/gpu_check.sh run      # on the GPU machine (carry .device): everything below
#   BENCH=1 bash bench/gpu_check.sh run    # ... then python3 bench/targets.py 16 (SECTIONS, BASE as there)
#
# `run` executes, with SHARDQUANT_REQUIRE_GPU=1 (a missing GPU fails) and
# SHARDQUANT_GOLDEN_DEVICE=cuda (the conversions run with --device cuda):
#   1. .device/gpu_twins --include-ignored: every CPU kernel against its CUDA twin, byte for byte,
#      through small staging buffers too;
#   2. .device/golden and .device/arch: ModelOpt's own exports, byte for byte, converted on the GPU;
#   3. .device/fp8_source: FP8 block-scaled sources on cuda against cpu (with a NaN under
#      --allow-nonfinite too);
#   4. .device/ct_export: model_free_ptq's schemes, byte-identical to llm-compressor on the GPU;
#   5. .device/ct_oneshot: the static schemes, tensor-identical to llm-compressor's oneshot on
#      the GPU (-0.0 aside), KV scales, read-back statistics, the pre-flight errors;
#   6. the compressed-tensors conversions of tests/client/check.sh (tests/client/cases.txt) on cuda and on cpu:
#      identical files.
# Exit status non-zero on any failure (the bench runs only when every check passed).
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=(gpu_twins golden arch fp8_source ct_export ct_oneshot)
case "${1:-}" in
build)
  cargo build --release --locked
  mkdir -p .device
  strip -o .device/shardquant target/release/shardquant
  cargo build --release --locked --example synth
  strip -o .device/synth target/release/examples/synth
  for t in "${TESTS[@]}"; do
    exe=$(cargo test --release --locked --test "$t" --no-run --message-format=json 2>/dev/null |
      jq -r "select(.executable != null and .target.name == \"$t\") | .executable")
    strip -o ".device/$t" "$exe"
  done
  ls -la .device
  ;;
run)
  export SHARDQUANT_REQUIRE_GPU=1 SHARDQUANT_GOLDEN_DEVICE=cuda
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  failed=0
  for t in "${TESTS[@]}"; do
    echo "== $t"
    ".device/$t" --include-ignored || failed=1
  done
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  source tests/client/cases.sh
  client_cases
  for case in "${CASES[@]}"; do
    parse_case "$case"
    for device in cuda cpu; do
      .device/shardquant convert "$src" "$WORK/$device" --format "$format" \
        --export compressed-tensors --device "$device" -qq "${extra[@]}"
    done
    same=1
    for f in "$WORK"/cpu/*.safetensors "$WORK"/cpu/config.json "$WORK"/cpu/model.safetensors.index.json; do
      cmp -s "$f" "$WORK/cuda/$(basename "$f")" || same=0
    done
    if [ "$same" = 1 ]; then
      echo "same on cuda and cpu: $case"
    else
      echo "DIFFERENT on cuda and cpu: $case"
      failed=1
    fi
    rm -rf "$WORK/cpu" "$WORK/cuda"
  done
  if [ "$failed" != 0 ]; then
    echo "GPU CHECK FAILED" >&2
    exit 1
  fi
  echo "GPU check passed"
  if [ "${BENCH:-0}" = 1 ]; then
    python3 bench/targets.py 16
  fi
  ;;
*)
  echo "usage: bash bench/gpu_check.sh build|run" >&2
  exit 2
  ;;
esac
