#!/usr/bin/env bash
# GPU check of the compressed-tensors static schemes (issue 16: NVFP4 W4A4, static FP8, the KV
# cache), in the style of the earlier GPU checks: the binaries are built on the development
# machine into .device/, then run on the GPU machine from the repository root.
#
#   bash bench/gpu_ct_static.sh build    # here: release build, test binaries into .device/ (stripped)
#   bash bench/gpu_ct_static.sh run      # on the GPU machine (carry .device): everything below
#
# `run` executes, with SHARDQUANT_REQUIRE_GPU=1 (a missing GPU fails) and
# SHARDQUANT_GOLDEN_DEVICE=cuda (the conversions run with --device cuda):
#   1. .device/gpu_twins --include-ignored: every CPU kernel against its CUDA twin, byte for byte,
#      the new ct_fp8_tensor (kernels/ct.cu) included (ct_kernels_match_the_cpu_bit_for_bit);
#   2. .device/ct_export: model_free_ptq's schemes, byte-identical to llm-compressor on the GPU;
#   3. .device/ct_oneshot: the static schemes, tensor-identical to llm-compressor's oneshot on
#      the GPU (-0.0 aside), KV scales, read-back statistics, the pre-flight errors;
#   4. the 13 conversions of tests/client/check.sh on cuda and on cpu: identical files.
# Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=(gpu_twins ct_export ct_oneshot)
case "${1:-}" in
build)
  cargo build --release --locked
  mkdir -p .device
  strip -o .device/shardquant target/release/shardquant
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
  .device/gpu_twins --include-ignored || failed=1
  .device/ct_export --include-ignored || failed=1
  .device/ct_oneshot --include-ignored || failed=1
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  for case in \
    "llama128_source w4a16_nvfp4" "llama128_source fp8_dynamic" "llama128_source fp8_block" \
    "qwen3moe128_source w4a16_nvfp4" "qwen3moe128_source fp8_dynamic" "qwen3moe128_source fp8_block" \
    "llama128_source nvfp4" "llama128_source fp8" "llama128_source fp8 --kv-cache fp8" \
    "qwen3moe128_source nvfp4" "qwen3moe128_source fp8" "qwen3moe128_source fp8 --kv-cache fp8" \
    "llama128_source w4a16_nvfp4 --kv-cache fp8"; do
    set -- $case
    src=fixtures/ct/$1
    format=$2
    shift 2
    extra=("$@")
    case "$format $*" in
      nvfp4* | "fp8 "* | *--kv-cache*) extra+=(--stats "$src.amax.safetensors") ;;
    esac
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
  exit $failed
  ;;
*)
  echo "usage: bash bench/gpu_ct_static.sh build|run" >&2
  exit 2
  ;;
esac
