"""Prints the stage breakdown of a shardquant --report JSON on a few lines (bench/stages.sh)."""
import json
import sys

r = json.load(open(sys.argv[1]))
t = r["timings_s"]
rnd = lambda d: {k: round(v, 2) for k, v in (d or {}).items()}
print("    preflight", round(t.get("preflight", 0), 2), "device_init", round(t.get("device_init") or 0, 2), "convert", round(t.get("convert", 0), 2),
      "total", round(t["total"], 2), "| gpu_units", r.get("gpu_units"), "threads", r.get("threads"),
      "| peak RSS MiB", round(r["memory"]["peak_rss_bytes"] / 2**20) if "memory" in r else "?")
print("    thread-s", rnd(t.get("stages_thread_s")))
print("    milestones s", rnd(t.get("milestones_s")))
print("    GB", {k: round(v / 1e9, 2) for k, v in (t.get("stages_bytes") or {}).items()})
