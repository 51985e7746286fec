#!/usr/bin/env bash
# The real-client check of issue 16: transformers with compressed-tensors (the versions pinned
# in fixtures/ct/requirements-check.txt, on the CPU) loads shardquant's compressed-tensors
# outputs of tiny dense and MoE models and of a tiny DeepSeek-V3 FP8 block-scaled source (every
# scheme: NVFP4A16, FP8_DYNAMIC, FP8_BLOCK, and the static NVFP4 W4A4 and FP8 W8A8, with and
# without the KV cache), runs a forward pass, and compares the logits with the BF16 source (for
# the FP8 source: its BF16 dequantization); each quantized weight is also decompressed with
# compressed-tensors' own API and compared with the source, and the static scales are checked
# against the activations and shown to be applied (fixtures/ct/check_client.py says exactly
# what it checks).
#
#   bash tests/client/check.sh            # from the repository root
#
# The Python environment is made once, outside the repository, in $SHARDQUANT_CLIENT_VENV
# (default ~/.cache/shardquant-client-venv); torch's Linux wheels from PyPI bring their CUDA
# libraries, so it takes about 6 GB and a few minutes the first time.
set -euo pipefail
export TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/../.."
VENV=${SHARDQUANT_CLIENT_VENV:-$HOME/.cache/shardquant-client-venv}
REQS=fixtures/ct/requirements-check.txt
if [ ! -f "$VENV/.installed" ] || ! cmp -s "$REQS" "$VENV/.installed"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    # Without ensurepip (Debian's python3 without python3-venv): virtualenv instead.
    python3 -m pip install --quiet --user virtualenv
    python3 -m virtualenv --quiet "$VENV"
  }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/.installed"
fi
cargo build --release --locked --quiet
BIN=target/release/shardquant
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
# The cases, one per line: tests/client/cases.txt.
source tests/client/cases.sh
client_cases
for case in "${CASES[@]}"; do
  parse_case "$case"
  name="$(basename "$src") --format $format${args[*]:+ ${args[*]}}"
  out=$WORK/$(echo "$name" | tr ' /' '__')
  "$BIN" convert "$src" "$out" --format "$format" --export compressed-tensors --device cpu -qq "${extra[@]}"
  [ "$ref" = "$src" ] && echo "== $name" || echo "== $name (against $(basename "$ref"))"
  if ! "$VENV/bin/python" fixtures/ct/check_client.py "$out" "$ref" --strict-fusion; then
    echo "FAILED: $name"
    failed=1
  fi
done
exit $failed
