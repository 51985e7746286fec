"""Helpers the GPU-machine benches share (bench/gpu.py, bench/mse.py, bench/targets.py)."""
import glob
import os
import subprocess

# Where the benches put their synthetic checkpoints and outputs.
WORK = os.environ.get("BENCH_DIR", "/tmp/sqbench")


def drop_caches():
    """Empties the page cache (needs root): the next read of a file comes from the disk."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def shard_bytes(d):
    """Bytes of the .safetensors files in directory d."""
    return sum(os.path.getsize(p) for p in glob.glob(f"{d}/*.safetensors"))


def timed(cmd):
    """Runs cmd under GNU time; returns (wall seconds, peak RSS MiB)."""
    tfile = f"{WORK}/time.txt"
    subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tfile] + cmd, check=True)
    wall, kb = open(tfile).read().split()
    return float(wall), int(kb) / 1024
