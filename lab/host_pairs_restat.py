"""Experiment record (eleventh session): recompute the host_pairs rows of a video_e2e results file from the layer times
each row keeps (`forward_layers`) with the current statistic (benchmarks.video_e2e.pair_samples: the layers right after
a sync left out as well), e.g. rows measured before it was the rule. The attention-call medians stay as measured.

    python lab/host_pairs_restat.py benchmarks/results/video_e2e-h200.json   # rewrites the file's rows, then --redraw
"""
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.video_e2e import pair_samples  # noqa: E402


def restat(row: dict) -> dict:
    ratios, times = [], ([], [])
    for f in row["forward_layers"]:
        layers = f["layer_us"]
        roles = [(i + (0 if f["a_on_even_layers"] else 1)) % 2 for i in range(len(layers))]
        synced = [i in f["synced"] for i in range(len(layers))]
        mine = pair_samples(roles, synced)
        ratios.append(statistics.median(layers[i] for i in mine[0]) / statistics.median(layers[i] for i in mine[1]))
        for role in (0, 1):
            times[role].extend(layers[i] for i in mine[role])
    balanced = [math.sqrt(x * y) for x, y in zip(ratios[::2], ratios[1::2])]
    return {**row, "ratio_median": statistics.median(balanced), "ratio_min": min(balanced),
            "ratio_max": max(balanced), "ratios": ratios, "a_ms_per_layer": statistics.median(times[0]) / 1e3,
            "b_ms_per_layer": statistics.median(times[1]) / 1e3, "layer_samples": len(times[0]) + len(times[1]),
            "statistic": "pair_samples, recomputed from forward_layers (attention-call medians as measured)"}


if __name__ == "__main__":
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    data["meta"]["host_pairs"] = [restat(r) for r in data["meta"]["host_pairs"]]
    path.write_text(json.dumps(data, indent=1))
    for r in data["meta"]["host_pairs"]:
        print(r["model"].split("/")[-1], r["a"], "/", r["b"], round(r["ratio_median"], 3),
              f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}")
