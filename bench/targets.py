"""Issue 13's targets, measured side by side in one run on the GPU machine, with ratios.

Run from the repository root with release binaries in .device/ (shardquant, synth); needs root
(drops the page cache for the cold rows) and python3 with torch for the PyTorch reference.

    python3 bench/targets.py [LAYERS]     # default 16 layers of a Qwen3-30B-A3B-shaped model (~20 GB BF16)

Sections (env SECTIONS, comma-separated; default all): warm, few (pinned to 4 cores with
--threads 4; FEW_ROUNDS rounds, default 2), cold (COLD_ROUNDS rounds, default 1), torch (bench/torch_reference.py warm and cold), mse (--calib
mse-fp8-sweep against --calib max on the GPU; MSE_ROUNDS rounds, default 1), fp8 (a DeepSeek-V3-shaped FP8 layer to NVFP4). Every row prints the
report's stage breakdown too. The machine's disk varies by tens of percent from minute to
minute: compare within one run. The write floor is writing the output's own bytes from the page
cache with `dd conv=fdatasync`, measured before and after the rows; the smaller (the faster disk)
is the floor used. `dd` of zeros of the same size is printed beside it: the GPU machine's virtual
disk writes zeros about 1.5x faster than real data, so it is no floor for real output.

BASE=path/to/an/earlier/shardquant adds that build's warm, few-core, cold and FP8-source rows on both devices,
interleaved with this build's (an A/B of a change in one run; rows marked "(base)"); BASE_DEVICES=cuda
keeps them to one device (default cuda,cpu).
"""
import os
import shutil
import subprocess
import sys
import time

from benchlib import WORK, drop_caches, shard_bytes, timed

LAYERS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
BIN = os.environ.get("BIN", ".device/shardquant")
BASE = os.environ.get("BASE")
BUILDS = [(BIN, "")] + ([(BASE, " (base)")] if BASE else [])
BASE_DEVICES = os.environ.get("BASE_DEVICES", "cuda,cpu").split(",")


def builds(dev):
    """The builds whose rows run on `dev`: this one, and BASE where BASE_DEVICES names `dev`."""
    return [(b, tag) for b, tag in BUILDS if not tag or dev in BASE_DEVICES]
SECTIONS = os.environ.get("SECTIONS", "warm,few,cold,torch,mse,fp8").split(",")
CKPT = f"{WORK}/qwen3-30b-a3b-shaped-{LAYERS}"
FP8_CKPT = f"{WORK}/deepseek-v3-fp8-slice-1"


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def read_floor(ckpt, cold):
    if cold:
        drop_caches()
    else:
        sh(f"cat {ckpt}/*.safetensors > /dev/null")
    t = time.time()
    sh(f"cat {ckpt}/*.safetensors > /dev/null")
    return time.time() - t


def write_floor(nbytes):
    """`dd` of zeros of the output's size with fdatasync (the issue's floor). On a virtual disk
    that detects zero blocks this is faster than any real output can be written."""
    t = time.time()
    sh(f"dd if=/dev/zero of={WORK}/dd bs=16M count={nbytes // (16 << 20) + 1} conv=fdatasync status=none")
    took = time.time() - t
    os.remove(f"{WORK}/dd")
    return took


def write_floor_real(out):
    """Writing the output's own bytes (from the page cache) with fdatasync: the floor for these
    bytes on this disk."""
    sh(f"cat {out}/*.safetensors > /dev/null")
    t = time.time()
    sh(f"cat {out}/*.safetensors | dd of={WORK}/dd bs=16M iflag=fullblock conv=fdatasync status=none")
    took = time.time() - t
    os.remove(f"{WORK}/dd")
    return took


def convert(ckpt, device, extra=(), pin=False, cold=False, keep=None, binary=BIN):
    out = keep or f"{WORK}/out"
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_caches()
    else:
        sh(f"cat {ckpt}/*.safetensors > /dev/null")
    report = f"{WORK}/report.json"
    cmd = [binary, "convert", ckpt, out, "--format", "nvfp4", "--stats", ckpt + ".amax.safetensors",
           "--device", device, "-qq", "--report", report, *extra]
    if pin:
        cmd = ["taskset", "-c", "0-3"] + cmd + ["--threads", "4"]
    wall, rss = timed(cmd)
    nbytes = shard_bytes(out)
    subprocess.run(["python3", "bench/report_line.py", report])
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return wall, rss, nbytes


def torch_reference(ckpt, cold):
    out = f"{WORK}/torch-out"
    shutil.rmtree(out, ignore_errors=True)
    if cold:
        drop_caches()
    else:
        sh(f"cat {ckpt}/*.safetensors > /dev/null")
    wall, rss = timed(["python3", "bench/torch_reference.py", ckpt, out, ckpt + ".amax.safetensors", "nvfp4"])
    shutil.rmtree(out, ignore_errors=True)
    return wall, rss


def main():
    os.makedirs(WORK, exist_ok=True)
    for path, args in [(CKPT, [CKPT, str(LAYERS), "2048", "128", "768"]),
                       (FP8_CKPT, ["--deepseek-fp8", FP8_CKPT, "1"])]:
        if not os.path.isdir(path) and (path == CKPT or "fp8" in SECTIONS):
            t = time.time()
            subprocess.run([".device/synth", *args], check=True, stdout=subprocess.DEVNULL)
            print(f"generated {path} in {time.time() - t:.1f} s", flush=True)
    rows = {}

    def row(name, wall, rss=None):
        rows.setdefault(name, []).append((wall, rss))
        print(f"{name}: {wall:.2f} s" + (f", peak RSS {rss:.0f} MiB" if rss else ""), flush=True)

    in_gb = shard_bytes(CKPT) / 1e9
    cached_read = read_floor(CKPT, cold=False)
    kept = f"{WORK}/kept"
    _, _, out_bytes = convert(CKPT, "cpu", keep=kept)  # the output, and a warm-up
    writes = [write_floor(out_bytes)]
    real_writes = [write_floor_real(kept)]
    if "warm" in SECTIONS:
        for _ in range(2):
            for dev in ["cuda", "cpu"]:
                for binary, tag in builds(dev):
                    row(f"warm {dev}{tag}", *convert(CKPT, dev, binary=binary)[:2])
    if "few" in SECTIONS:
        for _ in range(int(os.environ.get("FEW_ROUNDS", "2"))):
            for dev in ["cuda", "cpu"]:
                for binary, tag in builds(dev):
                    row(f"warm {dev}, 4 cores{tag}", *convert(CKPT, dev, pin=True, binary=binary)[:2])
    if "mse" in SECTIONS:
        for _ in range(int(os.environ.get("MSE_ROUNDS", "1"))):
            row("warm cuda --calib max", *convert(CKPT, "cuda")[:2])
            row("warm cuda --calib mse-fp8-sweep", *convert(CKPT, "cuda", ["--calib", "mse-fp8-sweep"])[:2])
    if "torch" in SECTIONS:
        row("PyTorch reference, warm", *torch_reference(CKPT, cold=False))
    cold_read = None
    if "cold" in SECTIONS:
        cold_read = read_floor(CKPT, cold=True)
        for _ in range(int(os.environ.get("COLD_ROUNDS", "1"))):
            for dev in ["cuda", "cpu"]:
                for binary, tag in builds(dev):
                    row(f"cold {dev}{tag}", *convert(CKPT, dev, cold=True, binary=binary)[:2])
        if "torch" in SECTIONS:
            row("PyTorch reference, cold", *torch_reference(CKPT, cold=True))
    writes.append(write_floor(out_bytes))
    real_writes.append(write_floor_real(kept))
    shutil.rmtree(kept, ignore_errors=True)
    fp8 = None
    if "fp8" in SECTIONS:
        fp8_read = read_floor(FP8_CKPT, cold=False)
        convert(FP8_CKPT, "cpu", keep=kept)
        fp8_write = write_floor_real(kept)
        for _ in range(2 if BASE else 1):
            for dev in ["cuda", "cpu"]:
                for binary, tag in builds(dev):
                    row(f"FP8 source warm {dev}{tag}", *convert(FP8_CKPT, dev, binary=binary)[:2])
        fp8 = (fp8_read, min(fp8_write, write_floor_real(kept)), shard_bytes(FP8_CKPT) / 1e9)
        shutil.rmtree(kept, ignore_errors=True)

    # The floor is writing these bytes; zeros are reported beside it.
    w = min(real_writes)
    warm_floor = max(w, cached_read)
    print()
    print(f"input {in_gb:.2f} GB, {LAYERS} layers, output {out_bytes / 1e9:.2f} GB; floors: cached read "
          f"{cached_read:.2f} s, write of the output's bytes {' / '.join(f'{x:.2f}' for x in real_writes)} s "
          f"(floor {w:.2f} s; zeros of that size: {' / '.join(f'{x:.2f}' for x in writes)} s)"
          + (f", cold read {cold_read:.2f} s" if cold_read else ""))
    print("| run | wall s (each) | best | vs floor | target | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    best = {k: min(x for x, _ in v) for k, v in rows.items()}

    def line(name, floor, floor_name, target):
        if name not in rows:
            return
        walls = " / ".join(f"{x:.2f}" for x, _ in rows[name])
        rss = max((r or 0) for _, r in rows[name])
        print(f"| {name} | {walls} | {best[name]:.2f} | {best[name] / floor:.2f}x {floor_name} | {target} | {rss:.0f} |")

    for dev in ["cuda", "cpu"]:
        for _, tag in builds(dev):
            line(f"warm {dev}{tag}", warm_floor, "max(write, cached read)", "<= 1.25x")
    for dev in ["cuda", "cpu"]:
        for _, tag in builds(dev):
            line(f"warm {dev}, 4 cores{tag}", warm_floor, "max(write, cached read)", "cuda >= 2x cpu")
    line("warm cuda --calib max", warm_floor, "max(write, cached read)", "")
    line("warm cuda --calib mse-fp8-sweep", warm_floor, "max(write, cached read)", "<= 1.25x")
    line("PyTorch reference, warm", warm_floor, "max(write, cached read)", "")
    if cold_read:
        for dev in ["cuda", "cpu"]:
            for _, tag in builds(dev):
                line(f"cold {dev}{tag}", cold_read + w, "read + write", "<= 1.0x")
        line("PyTorch reference, cold", cold_read + w, "read + write", "")
    if fp8:
        fr, fw, fgb = fp8
        print(f"FP8 source: {fgb:.2f} GB; cached read {fr:.2f} s, write floor {fw:.2f} s")
        for dev in ["cuda", "cpu"]:
            for _, tag in builds(dev):
                line(f"FP8 source warm {dev}{tag}", max(fr, fw), "max(write, cached read)", "<= 1.25x")
    print()
    ratio = lambda a, b: f"{best[a] / best[b]:.2f}" if a in best and b in best else "-"
    print("cuda vs cpu, 4 cores:", ratio("warm cpu, 4 cores", "warm cuda, 4 cores"), "(target >= 2)")
    print("cuda 4 cores vs 16 cores:", ratio("warm cuda, 4 cores", "warm cuda"), "(target <= 1.25)")
    print("PyTorch / shardquant cuda, warm:", ratio("PyTorch reference, warm", "warm cuda"), "(target >= 3)")
    print("PyTorch / shardquant cuda, cold:", ratio("PyTorch reference, cold", "cold cuda"), "(target >= 3)")


if __name__ == "__main__":
    main()
