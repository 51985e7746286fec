# Sourced by tests/client/check.sh and bench/gpu_check.sh (from the repository root): the cases of
# tests/client/cases.txt, and how one case line becomes a conversion, written once for both.

# Fills the array CASES with the case lines of tests/client/cases.txt.
client_cases() {
  mapfile -t CASES < <(grep -v -e '^#' -e '^$' tests/client/cases.txt)
}

# Parses one case line (INPUT[:REFERENCE] FORMAT [OPTIONS...]) into src (the input directory),
# ref (the reference: the input itself, or the BF16 model an FP8 block-scaled input is checked
# against, whose statistics the static schemes take), format, args (the case's own options) and
# extra (the options to pass to convert after --format: args, plus --stats of the reference where
# the scheme calibrates activations or the KV cache).
parse_case() {
  local words
  read -r -a words <<<"$1"
  src=fixtures/ct/${words[0]%%:*}
  ref=fixtures/ct/${words[0]#*:}
  format=${words[1]}
  args=("${words[@]:2}")
  extra=("${args[@]}")
  case "$format ${args[*]}" in
    nvfp4* | "fp8 "* | *--kv-cache*) extra+=(--stats "$ref.amax.safetensors") ;;
  esac
}
