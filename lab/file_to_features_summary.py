"""Summarise lab/logs/stream_probe-h200-300s*.jsonl (eighth session) into lab/logs/file_to_features-h200.{json,md,png}:
time from the video file to the vision tower's features, per path, median over every run of both calls."""
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOGS = Path(__file__).parent / "logs"
rows = [json.loads(line) for p in sorted(LOGS.glob("stream_probe-h200-300s*.jsonl")) for line in p.read_text().splitlines()
        if line.startswith("{")]
paths = {}
for r in rows:
    if r["what"] == "in a row":
        paths.setdefault(f"in a row, {r['reader']} reader", []).append(r)
    elif r["what"] == "streamed":
        paths.setdefault(f"streamed, {r['batch_pairs']} pairs a call", []).append(r)
summary = {"device": "NVIDIA H200 machine, 16 CPU cores", "model": "Qwen2.5-VL-7B (random weights, bf16)",
           "clip": "300 s 720p H.264 (x264 ultrafast, key frame every 250), 30 fps, sampled at 2 fps: 600 frames",
           "visual_tokens": rows[-2]["tokens"], "paths": {}}
for name, runs in paths.items():
    entry = {"runs": len(runs), "s": statistics.median(r["s"] for r in runs), "all_s": [round(r["s"], 3) for r in runs]}
    for part in ("sample_frames_s", "processor_s", "tower_s"):
        if part in runs[0]:
            entry[part] = statistics.median(r[part] for r in runs)
    if "equal" in runs[0]:
        entry["features_equal_to_in_a_row"] = all(r["equal"] for r in runs)
    summary["paths"][name] = entry
base = summary["paths"]["in a row, decord reader"]["s"]
for entry in summary["paths"].values():
    entry["speedup_vs_decord_in_a_row"] = base / entry["s"]
(LOGS / "file_to_features-h200.json").write_text(json.dumps(summary, indent=1))
lines = [f"# File to vision features, {summary['model']}, {summary['device']}", "",
         f"{summary['clip']}; {summary['visual_tokens']} visual tokens. Median of the runs (two calls).", "",
         "| path | runs | sample_frames s | processor s | tower s | file -> features s | vs decord in a row |",
         "|---|---|---|---|---|---|---|"]
for name, e in summary["paths"].items():
    cell = lambda k: f"{e[k]:.2f}" if k in e else "overlapped"
    lines.append(f"| {name} | {e['runs']} | {cell('sample_frames_s')} | {cell('processor_s')} | {cell('tower_s')} | "
                 f"{e['s']:.2f} ({', '.join(f'{x:.2f}' for x in e['all_s'])}) | {e['speedup_vs_decord_in_a_row']:.2f}x |")
(LOGS / "file_to_features-h200.md").write_text("\n".join(lines) + "\n")
fig, ax = plt.subplots(figsize=(8, 4.2))
names = list(summary["paths"])
for i, name in enumerate(names):
    e, left = summary["paths"][name], 0.0
    if "tower_s" in e:
        for part, colour in (("sample_frames_s", "#4c72b0"), ("processor_s", "#dd8452"), ("tower_s", "#55a868")):
            ax.barh(i, e[part], left=left, color=colour, label=part[:-2].replace("_", " ") if i == 0 else None)
            left += e[part]
    else:
        ax.barh(i, e["s"], color="#8172b3", label="streamed (all three at once)" if name == names[2] else None)
    ax.text(e["s"] + 0.1, i, f"{e['s']:.2f} s", va="center")
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set_xlabel("seconds from the file to the vision tower's features")
ax.set_title(f"300 s 720p video, {summary['visual_tokens']} visual tokens, Qwen2.5-VL-7B, H200 host")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, fontsize=8)
ax.set_xlim(0, max(e["s"] for e in summary["paths"].values()) * 1.15)
fig.tight_layout()
fig.savefig(LOGS / "file_to_features-h200.png", dpi=120)
print("\n".join(lines))
