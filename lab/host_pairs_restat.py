"""Experiment record (eleventh session): recompute the host_pairs rows of a video_e2e results file from the layer times
each row keeps (`forward_layers`) with the current statistic (benchmarks.video_e2e.pair_stats, whose pair_samples
leaves out the layers right after a sync as well), e.g. rows measured before it was the rule. The attention-call
medians stay as measured.

    python lab/host_pairs_restat.py benchmarks/results/video_e2e-h200.json   # rewrites the file's rows, then --redraw
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.video_e2e import pair_stats  # noqa: E402


def restat(row: dict) -> dict:
    forwards = []
    for f in row["forward_layers"]:
        n = len(f["layer_us"])
        roles = [(i + (0 if f["a_on_even_layers"] else 1)) % 2 for i in range(n)]
        forwards.append(([t / 1e6 for t in f["layer_us"]], roles, [i in f["synced"] for i in range(n)], None))
    return {**row, **pair_stats(forwards),
            "statistic": "pair_samples, recomputed from forward_layers (attention-call medians as measured)"}


if __name__ == "__main__":
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    data["meta"]["host_pairs"] = [restat(r) for r in data["meta"]["host_pairs"]]
    path.write_text(json.dumps(data, indent=1))
    for r in data["meta"]["host_pairs"]:
        print(r["model"].split("/")[-1], r["a"], "/", r["b"], round(r["ratio_median"], 3),
              f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}")
