"""One line per decoder-layer record and per named component of a lab/host_probe.py JSON-lines file (the lab GPU
scripts' summary of their host_probe runs).

    python3 lab/host_probe_summary.py host_probe.jsonl [--gpu-time] COMPONENT ...
"""
import argparse
import json

ap = argparse.ArgumentParser()
ap.add_argument("path")
ap.add_argument("components", nargs="+", help="component names to print (host microseconds)")
ap.add_argument("--gpu-time", action="store_true", help="also the GPU-time records")
args = ap.parse_args()
for line in open(args.path):
    r = json.loads(line)
    if r["what"] == "decoder layer":
        print(r["label"], r["mode"], "gc" if r["gc"] else "nogc",
              *(f"{k[:-10]}={r[k]:.0f}" for k in r if k.endswith("_us_median")))
    elif r["what"] == "component" and r["name"] in args.components:
        print(r["label"], r["name"], f"{r['host_us']:.0f}")
    elif r["what"] == "gpu time" and args.gpu_time:
        print(r["label"], "GPU", r["name"], f"{r['gpu_ms']:.3f} ms")
