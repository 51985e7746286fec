"""MSE calibration benchmark on the GPU machine, run from the repository root with the binaries
built on the development machine in .device/ (shardquant, synth, calib_error). Side by side in
one run, on the same checkpoint as bench/gpu.py (Qwen3-30B-A3B-shaped BF16, default 17 layers,
~21 GB): NVFP4 with --calib max, mse, mse-fp8-sweep and mse-fp8-sweep --importance stats on the
GPU, warm and cold page cache, wall time and the ratio to --calib max. Then the quantization
error of each mode (relative Frobenius error of the dequantized weights against the source,
averaged over the quantized linears, and the importance-weighted error) on a 2-layer checkpoint
of the same shapes (verify --source is single-threaded). Prints markdown tables. Needs root
(drops the page cache).

    python3 bench/mse.py [LAYERS]           # SKIP_ERRORS=1: only the speed table
    FORMAT=fp8 python3 bench/mse.py [LAYERS] # FP8: --calib max and mse only
    SKIP_COLD=1: only the warm-cache round; DEVICE=cpu: run on the CPU
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

from benchlib import WORK, drop_caches

LAYERS = int(sys.argv[1]) if len(sys.argv) > 1 else 17
BIN = ".device/shardquant"
SHAPE = ["2048", "128", "768"]  # hidden, experts, expert intermediate (Qwen3-30B-A3B)
FORMAT = os.environ.get("FORMAT", "nvfp4")
DEVICE = os.environ.get("DEVICE", "cuda")
MODES = [
    ("max", ["--calib", "max"]),
    ("mse", ["--calib", "mse"]),
    ("mse-fp8-sweep", ["--calib", "mse-fp8-sweep"]),
    ("mse-fp8-sweep + importance", ["--calib", "mse-fp8-sweep", "--importance", "stats"]),
]
if FORMAT == "fp8":
    MODES = MODES[:2]


def synth(ckpt, layers):
    if not os.path.isdir(ckpt):
        t = time.time()
        subprocess.run([".device/synth", ckpt, str(layers)] + SHAPE, check=True)
        print(f"generated {ckpt} in {time.time() - t:.1f} s", flush=True)
    return ckpt + ".amax.safetensors", ckpt + ".sums.stats.safetensors"


def convert(ckpt, out, amax, sums, args, device=DEVICE):
    shutil.rmtree(out, ignore_errors=True)
    stats = ["--stats", amax] + (["--stats", sums] if "--importance" in args else [])
    report = f"{WORK}/report.json"
    t = time.time()
    subprocess.run([BIN, "convert", ckpt, out, "--format", FORMAT, "--device", device, "--quiet", "--report", report] + stats + args, check=True)
    wall = time.time() - t
    r = json.load(open(report))
    assert device != "cuda" or r["gpu_units"] > 0, "no unit ran on the GPU"
    return wall


def main():
    os.makedirs(WORK, exist_ok=True)
    ckpt = f"{WORK}/qwen3-30b-a3b-shaped-{LAYERS}"
    amax, sums = synth(ckpt, LAYERS)
    in_bytes = sum(os.path.getsize(p) for p in glob.glob(f"{ckpt}/*.safetensors"))
    out = f"{WORK}/out"
    rows = []
    # Two rounds, modes interleaved, so that drift of the machine hits every mode alike; the
    # table shows the faster of the two runs of each mode.
    for cache in ["warm"] if os.environ.get("SKIP_COLD") == "1" else ["warm", "cold"]:
        if cache == "warm":
            subprocess.run(f"cat {ckpt}/*.safetensors > /dev/null", shell=True, check=True)
        walls = {}
        for _ in range(2):
            for name, args in MODES:
                if cache == "cold" and name not in ("max", "mse", "mse-fp8-sweep"):
                    continue
                if cache == "cold":
                    drop_caches()
                walls.setdefault(name, []).append(convert(ckpt, out, amax, sums, args))
                print(cache, name, walls[name][-1], flush=True)
        base = min(walls["max"])
        for name, w in walls.items():
            rows.append((f"{name}, {DEVICE}, {cache}", min(w), min(w) / base, max(w)))
    shutil.rmtree(out, ignore_errors=True)
    print()
    print(f"input {in_bytes / 1e9:.2f} GB BF16 (hidden 2048, 128 experts of 768), {LAYERS} layers, {FORMAT}")
    print("| run | wall s (best of 2) | vs --calib max | other run s |")
    print("|---|---|---|---|")
    for name, wall, ratio, other in rows:
        print(f"| {name} | {wall:.2f} | {ratio:.2f} | {other:.2f} |")

    if os.environ.get("SKIP_ERRORS") == "1":
        return
    small = f"{WORK}/qwen3-30b-a3b-shaped-2"
    amax, sums = synth(small, 2)
    outs = []
    for name, args in MODES:
        o = f"{WORK}/err-{name.replace(' ', '').replace('+', '-')}"
        convert(small, o, amax, sums, args)
        outs.append(o)
    print()
    print("quantization error, 2 layers of the same shapes:")
    subprocess.run([".device/calib_error", small, "--stats", sums] + outs, check=True)
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)


if __name__ == "__main__":
    main()
