"""Summarise lab/logs/first_token_probe-h200-300s.jsonl (ninth session) into lab/logs/first_token-h200.{json,md,png}:
the time from the video file to the first answer token, streamed against in a row, per mode (dense: transformers'
SDPA in the tower and the decoder; prism: prism_mm's varlen tower and Prism), median of the runs."""
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOGS = Path(__file__).parent / "logs"
rows = [json.loads(line) for line in (LOGS / "first_token_probe-h200-300s.jsonl").read_text().splitlines()
        if line.startswith("{")]
runs = [r for r in rows if r["what"] == "run"]
agree = all(r["agree"] for r in rows if r["what"] == "answers")
summary = {"device": "NVIDIA H200 machine, 16 CPU cores (torch 2.11, triton 3.6, transformers 5.17)",
           "model": "Qwen2.5-VL-7B (random weights, bf16)",
           "clip": "300 s 720p H.264 (x264 ultrafast, key frame every 250), 30 fps, sampled at 2 fps: 600 frames",
           "visual_tokens": runs[0]["visual_tokens"], "total_tokens": runs[0]["total_tokens"],
           "answers_agree_streamed_vs_in_a_row": agree, "rows": {}}
for mode in ("dense", "prism"):
    for path in ("in a row", "streamed"):
        mine = [r for r in runs if r["mode"] == mode and r["path"] == path]
        med = {k: statistics.median(r[k] for r in mine) for k in ("first_token_s", "video_s", "vision_s", "prefill_s")}
        entry = {"runs": len(mine), **med, "all_first_token_s": [round(r["first_token_s"], 3) for r in mine],
                 "mean_density": mine[0]["mean_density"]}
        # in a row: video_s = decoding + processor, prefill_s = tower + decoder; streamed: video_s holds the tower
        entry["decoder_s"] = entry["prefill_s"] - (entry["vision_s"] if path == "in a row" else 0.0)
        summary["rows"][f"{mode}, {path}"] = entry
for mode in ("dense", "prism"):
    a, b = summary["rows"][f"{mode}, in a row"], summary["rows"][f"{mode}, streamed"]
    b["sooner_than_in_a_row"] = a["first_token_s"] / b["first_token_s"]
base = summary["rows"]["dense, in a row"]["first_token_s"]
for entry in summary["rows"].values():
    entry["vs_dense_in_a_row"] = base / entry["first_token_s"]
(LOGS / "first_token-h200.json").write_text(json.dumps(summary, indent=1))
lines = [f"# File to first token, {summary['model']}, {summary['device']}", "",
         f"{summary['clip']}; {summary['visual_tokens']} visual tokens, {summary['total_tokens']} in all. Median of "
         f"{runs and summary['rows']['prism, streamed']['runs']} runs per row after a warm-up on the clip (VideoSession.run / "
         "run_streamed, 8 new tokens; `lab/first_token_probe.py`). Random weights select nearly every block "
         f"(Prism's mean density {summary['rows']['prism, streamed']['mean_density']:.2f}), so the prism rows' gain is "
         "the vision tower's. Answers streamed vs in a row agree: " + str(agree) + ".", "",
         "| mode, path | video stage s | of it the vision tower | decoder prefill s | first token s (runs) | "
         "streamed vs in a row | vs dense in a row |", "|---|---|---|---|---|---|---|"]
for name, e in summary["rows"].items():
    streamed = name.endswith("streamed")
    stage = f"{e['video_s']:.2f} (decoding, processor, tower at once)" if streamed else \
        f"{e['video_s']:.2f} (decoding + processor) + tower {e['vision_s']:.2f}"
    lines.append(f"| {name} | {stage} | {e['vision_s']:.2f} | {e['decoder_s']:.2f} | {e['first_token_s']:.2f} "
                 f"({', '.join(f'{x:.2f}' for x in e['all_first_token_s'])}) | "
                 f"{e.get('sooner_than_in_a_row', 1.0):.2f}x | {e['vs_dense_in_a_row']:.2f}x |")
(LOGS / "first_token-h200.md").write_text("\n".join(lines) + "\n")
fig, ax = plt.subplots(figsize=(8, 4.6))
names = list(summary["rows"])
for i, name in enumerate(names):
    e = summary["rows"][name]
    if name.endswith("streamed"):
        parts = [("decoding + processor + tower, overlapped", e["video_s"], "#8172b3"), ("decoder prefill", e["decoder_s"], "#c44e52")]
    else:
        parts = [("decoding + processor", e["video_s"], "#4c72b0"), ("vision tower", e["vision_s"], "#55a868"),
                 ("decoder prefill", e["decoder_s"], "#c44e52")]
    left = 0.0
    for label, width, colour in parts:
        ax.barh(i, width, left=left, color=colour, label=label)
        left += width
    ax.text(left + 0.2, i, f"{e['first_token_s']:.2f} s", va="center")
handles, labels = ax.get_legend_handles_labels()
unique = dict(zip(labels, handles))
ax.legend(unique.values(), unique.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set_xlabel("seconds from the file to the first answer token")
ax.set_title(f"{summary['model']}, 300 s clip, {summary['visual_tokens']} visual tokens, H200 host", fontsize=10)
fig.tight_layout()
fig.savefig(LOGS / "first_token-h200.png", dpi=120)
