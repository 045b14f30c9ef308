"""Several questions about each of several long videos: the wall time of each call a user makes, after the model is
loaded (shipped config, random weights, bf16, CUDA GPU; generated 720p clips).

Rows (each answers every question of every video, videos in turn, K questions each, VideoMME-shaped: a question with
four options, of a different length every time):
- transformers as shipped, from scratch: what lmms-eval's qwen2_5_vl class does per question: decord reads the
  qwen-vl-utils sample on the CPU, the processor makes the pixels on the CPU, model.generate (SDPA everywhere);
- prism_mm, no reuse: VideoSession with its defaults (streamed and pipelined Prism prefill), every question building
  the video's prefix again (the store cleared before each);
- prism_mm, reuse: the same session keeping each video's prefix: the first question of a video builds it, the
  others are answered from it.
Per question: first token (from the call to the first answer token, measured by a streamer callback) and answer (the
call's return), the prompt's visual tokens and whether the prefix was reused; per row: the total and the questions per
hour. prism_mm's one-time warm-up at load (VideoSession.warm_up) is reported beside, not inside, the rows.

    python -m benchmarks.questions                                  # 4 videos x 3 questions of 300 s clips
    python -m benchmarks.questions --rows transformers --merge      # add a row to the committed results
    python -m benchmarks.questions --smoke --out /tmp/q             # tiny model on the CPU: checks the code path only
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import Results, describe_runs, pyplot, run_info, save_figure
from prism_mm.pipelines.prefix import PrefixStore
from prism_mm.pipelines.session import PREFIX_DEVICE_BYTES, VideoSession
from prism_mm.pipelines.video import VideoOptions, build_inputs
from prism_mm.testing.clips import make_demo_video, make_long_clip

ROWS = ("prism_mm, reuse", "prism_mm, no reuse", "transformers as shipped")
ROW_ARGS = {"reuse": ROWS[0], "noreuse": ROWS[1], "transformers": ROWS[2]}
STEMS = ["Which object crosses the frame from left to right during the video?",
         "At the very end of the clip, where is the red square relative to the centre of the frame, and does it "
         "touch the border?",
         "How does the background colour change from the top-left corner to the bottom-right corner of the frame?",
         "What happens in the video?"]
OPTIONS = ["A. A red square", "B. A blue disc moving down", "C. Nothing moves at all", "D. A green triangle"]


def question(video: int, k: int) -> str:
    """The k-th question about video `video`: a stem with four options and the VideoMME instruction; its length
    differs from every other (video, k) pair (the stem cycles, the video's number is spelled into it)."""
    stem = STEMS[(video + k) % len(STEMS)]
    return (f"{stem} (clip {video + 1}, question {k + 1}{'.' * (video * 7 + k)})\n" + "\n".join(OPTIONS) +
            "\nAnswer with the option's letter from the given choices directly.")


class FirstToken:
    """A callback / transformers streamer that notes when the first answer token arrives."""

    def __init__(self):
        self.at = None

    def __call__(self, token=None):
        if self.at is None:
            self.at = time.perf_counter()

    def put(self, value):  # transformers' streamer: the prompt comes first, then each new token
        if getattr(self, "_prompt_seen", False):
            self()
        self._prompt_seen = True

    def end(self):
        pass


def alloc_retries() -> int:
    """The CUDA caching allocator's retries so far (an allocation that found no cached block, freed them all and asked
    the driver again: a slow path)."""
    return torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0


def reserved_gib() -> float:
    return torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0


def prism_rows(name: str, clips: list[str], k: int, opts: VideoOptions, tokens: int, rows: list[str], smoke: bool):
    """prism_mm's rows (one loaded session; each row records the session's load and warm-up seconds)."""
    out, device = [], "cpu" if smoke else "cuda"
    started = time.perf_counter()
    session = VideoSession(name, device=device, random_weights=not smoke, prefixes=PrefixStore(PREFIX_DEVICE_BYTES))
    load_s = time.perf_counter() - started
    warmup_s = session.warm_up() if not smoke else 0.0
    for row in [r for r in ROWS[:2] if r in rows]:
        session.prefixes.clear()
        for v, clip in enumerate(tqdm(clips, desc=row)):
            video = None
            for q in range(k):
                if row == ROWS[1]:
                    session.prefixes.clear()
                first = FirstToken()
                retries = alloc_retries()
                t0 = time.perf_counter()
                if video is None or row == ROWS[1]:
                    video = session.load_video(clip, opts)  # the call that builds the prefix
                record = video.ask(question(v, q), tokens, on_token=first)
                end = time.perf_counter()
                out.append({"row": row, "video": v, "question": q, "first_token_s": first.at - t0,
                            "answer_s": end - t0, "reused": record.reused, "visual_tokens": record.visual_tokens,
                            "question_tokens": record.question_tokens, "new_tokens": record.new_tokens,
                            "question_s": record.question_s, "decode_s": record.decode_s,
                            "mean_density": record.mean_density, "alloc_retries": alloc_retries() - retries,
                            "reserved_gib": reserved_gib(), "load_s": load_s, "warmup_s": warmup_s})
    del session
    return out


def transformers_row(name: str, clips: list[str], k: int, opts: VideoOptions, tokens: int, smoke: bool, save):
    """transformers as shipped answering each question from scratch (the pipeline lmms-eval's qwen2_5_vl runs);
    save(rows so far) after each video."""
    from transformers import AutoModelForImageTextToText

    from prism_mm.models import shipped_config
    from prism_mm.testing.tiny import build_tiny_model, build_tiny_processor

    if smoke:
        model = build_tiny_model("qwen2_5_vl")
    else:
        config = shipped_config(name)
        config._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
    processor = build_tiny_processor(model.config.model_type, real_vocab=not smoke)
    plain = VideoOptions(**{**opts.__dict__, "reader": "decord"})  # qwen-vl-utils' decord read, on the CPU
    out, device = [], model.device
    for v, clip in enumerate(tqdm(clips, desc=ROWS[2])):
        for q in range(k):
            first = FirstToken()
            retries = alloc_retries()
            t0 = time.perf_counter()
            prepared = build_inputs(processor, model.config, clip, question(v, q), plain)
            inputs = {key: val.to(device) if isinstance(val, torch.Tensor) else val for key, val in prepared.inputs.items()}
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, streamer=first)
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            out.append({"row": ROWS[2], "video": v, "question": q, "first_token_s": first.at - t0,
                        "answer_s": end - t0, "reused": False, "visual_tokens": prepared.visual_tokens,
                        "question_tokens": None, "new_tokens": int(generated.shape[1] - prepared.total_tokens),
                        "alloc_retries": alloc_retries() - retries, "reserved_gib": reserved_gib()})
        save(out)
    del model
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per row: questions, total seconds, questions per hour, median first token of built and of reused prefixes."""
    out = []
    for row in ROWS:
        mine = [r for r in rows if r["row"] == row]
        if not mine:
            continue
        total = sum(r["answer_s"] for r in mine)
        built = [r["first_token_s"] for r in mine if not r["reused"]]
        reused = [r["first_token_s"] for r in mine if r["reused"]]
        out.append({"row": row, "questions": len(mine), "videos": len({r["video"] for r in mine}), "total_s": total,
                    "questions_per_hour": 3600 * len(mine) / total,
                    "first_token_built_s": statistics.median(built) if built else None,
                    "first_token_reused_s": statistics.median(reused) if reused else None,
                    "first_token_reused_max_s": max(reused) if reused else None})
    return out


def sizes(data: dict) -> dict:
    """The results' meta with the videos and questions its rows span (rows merged from runs of other sizes)."""
    return {**data["meta"], "videos": 1 + max(r["video"] for r in data["rows"]),
            "questions": 1 + max(r["question"] for r in data["rows"])}


def table(data: dict) -> list[str]:
    meta = sizes(data)
    lines = [f"# Several questions per video ({meta['model']}, random weights, {meta.get('dtype', 'bf16')}; "
             f"{meta['device']})", "",
             f"{meta['videos']} generated {meta['seconds']:.0f} s {meta['height']}p clips x {meta['questions']} "
             f"VideoMME-shaped questions, {meta['max_new_tokens']} new tokens each; wall time of each call after the "
             "model is loaded. prism_mm's one-time warm-up at load (VideoSession.warm_up, once per loaded model and "
             "process) is not in the rows: " + "; ".join(
                 f"{row}: {r['warmup_s']:.1f} s (model load {r['load_s']:.1f} s)"
                 for row, r in {r["row"]: r for r in data["rows"] if "warmup_s" in r}.items()) + ".", "",
             "| row | questions | total s | questions / hour | vs transformers | first token, prefix built (median) s "
             "| first token, prefix reused (median / max) s |", "|---|---|---|---|---|---|---|"]
    summary = summarize(data["rows"])
    base = next((s for s in summary if s["row"] == ROWS[2]), None)
    for s in summary:
        speed = f"{s['questions_per_hour'] / base['questions_per_hour']:.2f}x" if base else "-"
        count = f"{s['questions']} ({s['videos']} videos)"
        reused = (f"{s['first_token_reused_s']:.3f} / {s['first_token_reused_max_s']:.3f}"
                  if s["first_token_reused_s"] is not None else "-")
        built = f"{s['first_token_built_s']:.2f}" if s["first_token_built_s"] is not None else "-"
        lines.append(f"| {s['row']} | {count} | {s['total_s']:.1f} | {s['questions_per_hour']:.0f} | {speed} "
                     f"| {built} | {reused} |")
    lines += ["", "Per question (first token / answer, seconds; r: answered from a reused prefix):", "",
              "| row | " + " | ".join(f"v{v + 1} q{q + 1}" for v in range(meta["videos"]) for q in range(meta["questions"]))
              + " |", "|---|" + "---|" * (meta["videos"] * meta["questions"])]
    for row in ROWS:
        mine = {(r["video"], r["question"]): r for r in data["rows"] if r["row"] == row}
        if mine:
            cells = [f"{r['first_token_s']:.2f} / {r['answer_s']:.2f}{' r' if r['reused'] else ''}"
                     for r in (mine.get((v, q)) for v in range(meta["videos"]) for q in range(meta["questions"])) if r]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    visual = sorted({r["visual_tokens"] for r in data["rows"]})
    lines += ["", f"Visual tokens per video: {', '.join(map(str, visual))}.", *describe_runs(meta)]
    return lines


def plot(data: dict, path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {ROWS[0]: "tab:green", ROWS[1]: "tab:blue", ROWS[2]: "tab:gray"}
    for row in ROWS:
        mine = [r for r in data["rows"] if r["row"] == row]
        if not mine:
            continue
        t = 0.0
        xs, ys = [0.0], [0]
        for i, r in enumerate(mine):
            t += r["answer_s"]
            xs.append(t)
            ys.append(i + 1)
        left.step(xs, ys, where="post", label=row, color=colors[row])
        right.scatter(range(1, len(mine) + 1), [r["first_token_s"] for r in mine], label=row, color=colors[row], s=18)
    left.set_xlabel("wall time, s")
    left.set_ylabel("questions answered")
    left.set_title("questions answered over time")
    left.legend()
    right.set_yscale("log")
    right.set_xlabel("question (videos in turn)")
    right.set_ylabel("first token, s (log)")
    right.set_title("time to the first answer token per question")
    meta = sizes(data)
    fig.suptitle(f"{meta['model']} (random weights), {meta['videos']} x {meta['seconds']:.0f} s clips x "
                 f"{meta['questions']} questions, {meta['device']}")
    fig.tight_layout()
    save_figure(fig, path, 110)


def write_clip(path: Path, seconds: float, seed: int, smoke: bool) -> None:
    """The benchmark's clip at `path` unless it is there (a small demo clip with --smoke)."""
    if path.exists():
        return
    part = path.with_suffix(".part.mp4")
    if smoke:
        make_demo_video(part, seconds=seconds, fps=8, height=112, width=168, seed=seed)
    else:
        make_long_clip(part, seconds, seed=seed)
    part.rename(path)


RESULTS = Results("questions", key=lambda r: (r["row"], r["video"], r["question"]), table=table, plot=plot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct", help="a shipped architecture (random weights)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--questions", type=int, default=3, help="per video")
    ap.add_argument("--seconds", type=float, default=300.0, help="length of each generated clip")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--rows", nargs="+", choices=sorted(ROW_ARGS), default=sorted(ROW_ARGS))
    ap.add_argument("--clips", type=Path, default=Path("/tmp/prism_mm_clips"), help="where the clips are written "
                    "(kept: a later run with the same length reuses them)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and short clips on the CPU: the code path only")
    args = RESULTS.parse(ap)
    if args is None:  # --redraw
        return
    device = None
    if not args.smoke:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks.questions needs a CUDA GPU (or --smoke)")
        device = torch.cuda.get_device_name()
    base = RESULTS.load(args.out, device) if args.merge else None
    rows = [ROW_ARGS[r] for r in args.rows]
    height = 112 if args.smoke else 720
    clips = [args.clips / f"clip{v}-{args.seconds:g}s-{height}p.mp4" for v in range(args.videos)]
    with ProcessPoolExecutor(max_workers=args.videos) as pool:  # the encoders of long clips in parallel
        list(tqdm(pool.map(write_clip, clips, [args.seconds] * len(clips), range(len(clips)), [args.smoke] * len(clips)),
                  total=len(clips), desc="writing clips"))
    clips = [str(c) for c in clips]
    name = "tiny-qwen2.5-vl" if args.smoke else args.model
    opts = VideoOptions(max_frames=8) if args.smoke else VideoOptions()
    measured = []

    def save(rows_so_far: list[dict]) -> None:
        """Write what is measured so far (a run cut short keeps its finished questions)."""
        meta = {"model": name, "device": device or "cpu", "dtype": "fp32" if args.smoke else "bf16",
                "videos": args.videos, "questions": args.questions,
                "seconds": args.seconds, "height": height, "max_new_tokens": args.max_new_tokens}
        RESULTS.save(meta, run_info(rows=rows), rows_so_far, args.out, device, base, quiet=True)

    if any(r in rows for r in ROWS[:2]):
        measured += prism_rows(name, clips, args.questions, opts, args.max_new_tokens, rows, args.smoke)
        save(measured)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if ROWS[2] in rows:
        done = list(measured)
        measured += transformers_row(args.model, clips, args.questions, opts, args.max_new_tokens, args.smoke,
                                     lambda video_rows: save(done + video_rows))
    save(measured)
    print("\n".join(table(RESULTS.load(args.out, device))))


if __name__ == "__main__":
    main()
