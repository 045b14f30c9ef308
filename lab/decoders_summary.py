"""Summarise the tenth session's three first-token calls on the H200 host (16 cores) into
lab/logs/first_token_decoders-h200.{json,md,png}: the decoders' lower priority (call 1), where the pipelined prefill's
time went (call 2: a timeline per run) and the decoders in processes against threads (call 3). Qwen2.5-VL-7B random
weights (bf16), Prism mode, the 300 s 720p clip (109,200 visual tokens); median of two runs per path.

    python lab/decoders_summary.py
"""
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOGS = Path(__file__).parent / "logs"
CALLS = {
    "1 (priority)": "first_token_probe-h200-300s-nice.jsonl",
    "2 (timeline)": "first_token_probe-h200-300s-timeline.jsonl",
    "3 (processes)": "first_token_probe-h200-300s-processes.jsonl",
}
# call 1 ran with the decoders at nice 10 (stream.DECODE_NICE of the time) unless the path says "normal priority";
# call 2 likewise; call 3 after the nice was removed, decoders in processes unless the path says "threads"


def records(name):
    return [json.loads(line) for line in (LOGS / name).read_text().splitlines() if line.startswith("{")]


summary = {"device": "NVIDIA H200 machine, 16 CPU cores (torch 2.11, triton 3.6, transformers 5.17)",
           "model": "Qwen2.5-VL-7B (random weights, bf16), Prism mode (varlen tower + Prism decoder)",
           "clip": "300 s 720p H.264, 30 fps, sampled at 2 fps: 600 frames, 109,200 visual tokens", "calls": {}}
for call, name in CALLS.items():
    rows = records(name)
    runs = [r for r in rows if r["what"] == "run"]
    paths = {}
    for r in runs:
        paths.setdefault(r["path"], []).append(r)
    out = {}
    for path, mine in paths.items():
        med = {k: statistics.median(r[k] for r in mine) for k in ("first_token_s", "video_s", "vision_s", "prefill_s")}
        out[path] = {**med, "runs": [round(r["first_token_s"], 2) for r in mine],
                     "chunks_streamed": f"{mine[0]['decoder_chunks_streamed']} of {mine[0]['decoder_chunks']}"}
    summary["calls"][call] = {"file": f"lab/logs/{name}", "paths": out,
                              "answers_agree": all(r["agree"] for r in rows if r["what"] == "answers")}
(LOGS / "first_token_decoders-h200.json").write_text(json.dumps(summary, indent=1))

lines = [f"# File to first token: the decoders' priority, threads or processes; {summary['model']}", "",
         f"{summary['device']}. {summary['clip']}. Median of 2 runs per path after a warm-up (threads paths of call 3 "
         "share the processes paths' warm-up). first token = video stage + the rest of the prefill; with decoder "
         "chunks the video stage holds the chunks run while frames still decoded. Calls 1-2: decoders in threads "
         "at nice 10 unless the path says normal priority; call 3: nice removed, decoders in processes unless the "
         "path says threads.", "",
         "| call | path | first token s (runs) | video stage s | of it the tower s | rest of the prefill s | decoder chunks "
         "in the stream |", "|---|---|---|---|---|---|---|"]
for call, c in summary["calls"].items():
    for path, e in c["paths"].items():
        lines.append(f"| {call} | {path} | {e['first_token_s']:.2f} ({', '.join(f'{x:.2f}' for x in e['runs'])}) | "
                     f"{e['video_s']:.2f} | {e['vision_s']:.2f} | {e['prefill_s']:.2f} | {e['chunks_streamed']} |")
(LOGS / "first_token_decoders-h200.md").write_text("\n".join(lines) + "\n")

# plot: call 3's first tokens, and call 3's first pipelined runs as timelines (GPU work of the tower and the chunks)
fig, (bars, tl) = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1, 1.5]})
c3 = summary["calls"]["3 (processes)"]["paths"]
names = list(c3)
bars.barh(range(len(names)), [c3[n]["first_token_s"] for n in names], color="#4477aa")
for i, n in enumerate(names):
    bars.text(c3[n]["first_token_s"] + 0.1, i, f"{c3[n]['first_token_s']:.2f} s", va="center", fontsize=8)
def label(path):
    path = path.replace("streamed, pipelined", "pipelined")
    return path if "threads" in path else f"{path}, decoders in processes"


bars.set_yticks(range(len(names)), [label(n) for n in names], fontsize=8)
bars.invert_yaxis()
bars.set_xlabel("file to first token, s (median of 2)")
bars.set_title("call 3: decoders in processes vs threads")
timelines = [r for r in records(CALLS["3 (processes)"]) if r["what"] == "timeline" and r["repeat"] == 0
             and "pipelined" in r["path"]]
for row, r in enumerate(timelines):
    for call in r["calls"]:
        a, b = call["gpu"]
        tl.barh(row, b - a, left=a, color="#ee6677" if call["kind"] == "chunk" else "#228833", height=0.5)
    frames = r["frames_landed"]
    tl.plot([t for t, _ in frames], [row - 0.4 + 0.8 * f for _, f in frames], color="black", lw=1)
tl.set_yticks(range(len(timelines)), [label(r["path"]).replace(" chunks of 8192", "").replace(", decoders", "\ndecoders")
                                      for r in timelines], fontsize=8)
tl.set_xlabel("s from the call: tower calls (green) and decoder chunks (red) on the GPU; line: frames landed")
tl.set_title("call 3, first run: GPU work while the frames decode")
fig.tight_layout()
fig.savefig(LOGS / "first_token_decoders-h200.png", dpi=110)
print("\n".join(lines))
