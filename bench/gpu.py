"""GPU benchmark, run on the GPU machine from the repository root with the binaries built on the
development machine in .device/ (shardquant, synth). Side by side in one run: the I/O floor
(cold read of every input byte + writing the output's byte count with fdatasync), shardquant on
the GPU and on all CPU cores, NVFP4 and FP8, cold and warm page cache, and the PyTorch reference
(bench/torch_reference.py, warm). Prints a markdown table. Needs root (drops the page cache).

    python3 bench/gpu.py [LAYERS]    # default 17 layers of a Qwen3-30B-A3B-shaped model (~21 GB BF16)
    python3 bench/gpu.py fp8 [LAYERS] # FP8-source rows: DeepSeek-V3-shaped FP8 slice (1 layer ~ 11.5 GB) to NVFP4
"""
import json
import os
import shutil
import subprocess
import sys
import time

from benchlib import WORK, drop_caches, shard_bytes, timed

FP8 = len(sys.argv) > 1 and sys.argv[1] == "fp8"
ARGS = sys.argv[2:] if FP8 else sys.argv[1:]
LAYERS = int(ARGS[0]) if ARGS else (1 if FP8 else 17)
BIN = ".device/shardquant"
CKPT = f"{WORK}/deepseek-v3-fp8-slice-{LAYERS}" if FP8 else f"{WORK}/qwen3-30b-a3b-shaped-{LAYERS}"
AMAX = CKPT + ".amax.safetensors"


def main():
    os.makedirs(WORK, exist_ok=True)
    if not os.path.isdir(CKPT):
        t = time.time()
        if FP8:
            subprocess.run([".device/synth", "--deepseek-fp8", CKPT, str(LAYERS)], check=True)
        else:
            subprocess.run([".device/synth", CKPT, str(LAYERS), "2048", "128", "768"], check=True)
        print(f"generated {CKPT} in {time.time() - t:.1f} s", flush=True)
    in_bytes = shard_bytes(CKPT)
    drop_caches()
    t = time.time()
    subprocess.run(f"cat {CKPT}/*.safetensors > /dev/null", shell=True, check=True)
    read_cold = time.time() - t
    rows = []
    write_floor = {}
    for fmt in (["nvfp4"] if FP8 else ["nvfp4", "fp8"]):
        for dev in ["cuda", "cpu"]:
            for cache in ["cold", "warm"]:
                out = f"{WORK}/out"
                shutil.rmtree(out, ignore_errors=True)
                if cache == "cold":
                    drop_caches()
                report = f"{WORK}/report.json"
                wall, rss = timed([BIN, "convert", CKPT, out, "--format", fmt, "--stats", AMAX, "--device", dev, "--quiet", "--report", report])
                r = json.load(open(report))
                if fmt not in write_floor:
                    n = shard_bytes(out)
                    t = time.time()
                    subprocess.run(["dd", "if=/dev/zero", f"of={WORK}/dd", "bs=16M", f"count={n // (16 << 20) + 1}", "conv=fdatasync", "status=none"], check=True)
                    write_floor[fmt] = time.time() - t
                    os.remove(f"{WORK}/dd")
                floor = read_cold + write_floor[fmt]
                rows.append((f"shardquant {fmt} --device {dev}, {cache}", wall, wall / floor, rss, r["gpu_units"], r["memory"]["peak_in_flight_bytes"] / 2**20))
                print(rows[-1], flush=True)
                shutil.rmtree(out, ignore_errors=True)
        if FP8:
            continue
        out = f"{WORK}/torch-out"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = timed(["python3", "bench/torch_reference.py", CKPT, out, AMAX, fmt])
        floor = read_cold + write_floor[fmt]
        rows.append((f"PyTorch reference {fmt}, warm", wall, wall / floor, rss, "-", 0))
        print(rows[-1], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print()
    shape = "FP8 DeepSeek-V3 slice (hidden 7168, 256 experts of 2048, MLA)" if FP8 else "BF16 (hidden 2048, 128 experts of 768)"
    writes = " / ".join(f"{v:.2f} s ({k})" for k, v in write_floor.items())
    print(f"input {in_bytes / 1e9:.2f} GB {shape}, {LAYERS} layer(s); "
          f"I/O floor: cold read {read_cold:.2f} s ({in_bytes / 1e9 / read_cold:.2f} GB/s) + write {writes}")
    print("| run | wall s | input GB/s | wall / I/O floor | peak RSS MiB | GPU units | in flight MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, wall, ratio, rss, gu, fl in rows:
        print(f"| {name} | {wall:.2f} | {in_bytes / 1e9 / wall:.2f} | {ratio:.2f} | {rss:.0f} | {gu} | {fl:.0f} |")


if __name__ == "__main__":
    main()
