r"""Answer questions about a local video with a Qwen-VL model, Prism or dense attention.

    python -m prism_mm.pipelines.video_qa --video clip.mp4 --question "What happens?" \
        [--question "What colour is it?" ...] [--chat] \
        [--model Qwen/Qwen2.5-VL-7B-Instruct | /local/path | tiny-qwen2.5-vl] [--attn prism|dense|compare]

The video's prefix (the prompt up to the end of the video: decoding, vision tower, decoder prefill) is built once;
each question is answered from it, with its own first-token time (the first answer's includes the prefix build).
--question may be given several times: each is answered on its own from the same prefix. --chat reads questions
from standard input, one per line, until an empty line or the end of the input, and answers each as it comes, as
one conversation (each turn sees the earlier questions and answers); --question values given with --chat open
the conversation. --chat answers in one attention mode (prism or dense).

--json prints, for one --question, its result as one JSON object; for several, a list of those objects in the
order asked ("reused": true where the prefix an earlier question built answered it); with --chat, one JSON object
per line for each turn as it is answered (JSON Lines: "turn", "question" and the run's record).

`tiny-qwen2.5-vl`, `tiny-qwen3-vl`, `tiny-qwen2-vl` are toy random-weight models (built once into
~/.cache/prism_mm) that run anywhere; `--random-weights` builds a real architecture from the shipped
configs. Both give meaningless answers: use them to check the pipeline and to measure speed.
This module is the argparse adapter over prism_mm.pipelines.qa (VideoQA) and .report (format_report).
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from ..config import SELECTION_METHODS, PrismConfig
from ..models import SHIPPED_CONFIGS, VISION_ATTENTIONS, resolve_model
from .prefill import ChunkConfig
from .qa import MODES, VideoQA
from .record import RunRecord
from .report import _stages, format_report, printable, secs
from .session import DEFAULT_MODEL, STREAM_CHUNKS, check_device, stream_chunks_of
from .video import VideoError, VideoOptions


VIDEO_CONFIG = PrismConfig.video()  # the defaults of the Prism flags: a flag not given leaves its field as this has it


def parse_args(argv=None):
    d = VIDEO_CONFIG
    ap = argparse.ArgumentParser(prog="python -m prism_mm.pipelines.video_qa", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="path of a local video file")
    ap.add_argument("--question", action="append", default=[],
                    help="a question about the video; several times: each answered from the same video prefix")
    ap.add_argument("--chat", action="store_true",
                    help="a conversation: questions from standard input, one per line, until an empty line or the end "
                         "of the input; each answered as it comes, after the earlier turns")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local directory or tiny-qwen2.5-vl / tiny-qwen3-vl")
    ap.add_argument("--attn", choices=list(MODES), default="prism")
    ap.add_argument("--fps", type=float, default=VideoOptions.fps)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--min-pixels", type=int)
    ap.add_argument("--max-pixels", type=int, help="per frame")
    ap.add_argument("--total-pixels", type=int, help="over all frames")
    ap.add_argument("--start", type=float, help="seconds")
    ap.add_argument("--end", type=float, help="seconds")
    ap.add_argument("--block-size", type=int, help=f"tokens per block (default {d.block_size})")
    ap.add_argument("--threshold", type=float,
                    help=f"top-p mass kept per band, in (0, 1] (default {d.threshold_high} / {d.threshold_low}: high / "
                         "low band)")
    ap.add_argument("--method", choices=list(SELECTION_METHODS),
                    help="block selection: the paper's dual-band top-p, one cutoff on the mean band probability, or "
                         f"mean pooling (see PrismConfig; default {d.method})")
    ap.add_argument("--cutoff", type=float, help=f"--method cutoff: the cutoff, in (0, 1) (default {d.cutoff})")
    ap.add_argument("--dense-tail", type=int,
                    help="the prompt's last N query tokens (the question) attend to everything; 0: the paper's "
                         f"selection (default {d.dense_tail})")
    ap.add_argument("--min-sparse-len", type=int, help=f"shorter prompts run dense (default {d.min_sparse_len})")
    ap.add_argument("--max-density", type=float,
                    help="a layer whose selection keeps more than this fraction of the blocks runs dense (costs one "
                         f"GPU sync per layer); 1.0: never (default {d.max_density})")
    ap.add_argument("--vision-attn", choices=list(VISION_ATTENTIONS), default="varlen",
                    help="Prism runs' vision-tower attention: batched varlen (default) or transformers' SDPA per window")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--chunk-tokens", type=int,
                    help="prefill the decoder this many tokens at a time (bounds peak memory on very long videos; "
                         "streamed, each chunk runs as soon as its video features exist)")
    ap.add_argument("--vision-chunk-frames", type=int,
                    help="with --chunk-tokens: run the vision tower on this many temporal patches at a time")
    ap.add_argument("--stream-chunk-tokens", type=int, default=STREAM_CHUNKS.decoder_tokens,
                    help="streamed, without --chunk-tokens: run Prism's decoder prefill in chunks of this many "
                         "tokens, each as soon as its video features exist (0: one pass after the stream; dense runs "
                         "always take one pass)")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                    help="decode the video while the vision tower runs on the frames decoded so far (the default, "
                         "where the video allows; first token sooner on long videos); --no-stream: decoding, the "
                         "processor and the prefill in a row")
    ap.add_argument("--decode-workers", type=int, help="parallel decoders of the video file (default: half the cores)")
    ap.add_argument("--decoders", choices=sorted(DECODERS), default="auto",
                    help="run the parallel decoders in processes or threads (auto: processes while the decoder "
                         "prefill is pipelined behind the decoding, as Prism's default stream does; threads otherwise)")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--random-weights", action="store_true", help="shipped architecture, random weights (speed runs)")
    ap.add_argument("--json", action="store_true",
                    help="print JSON: one question's result; a list of results for several; one line per turn with "
                         "--chat")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


DECODERS = {"auto": None, "processes": True, "threads": False}  # --decoders -> VideoOptions.decode_processes

# PrismConfig fields -> the flag that sets them, so that an error names what the user typed.
FLAGS = {"threshold_high": "--threshold", "threshold_low": "--threshold", "block_size": "--block-size",
         "min_sparse_len": "--min-sparse-len", "max_density": "--max-density", "method": "--method",
         "cutoff": "--cutoff", "dense_tail": "--dense-tail"}


def prism_config(args) -> PrismConfig:
    """The PrismConfig of the flags (PrismConfig.video() where a flag is not given); ValueError naming the flag for
    values out of range."""
    given = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in FLAGS.items()
             if field not in ("threshold_high", "threshold_low")}
    try:
        config = PrismConfig.video(**{k: v for k, v in given.items() if v is not None})
        return config if args.threshold is None else config.with_threshold(args.threshold)
    except ValueError as e:
        raise ValueError(re.sub(r"PrismConfig\.(\w+)", lambda m: FLAGS.get(m.group(1), m.group(0)), str(e))) from None


def check_questions(args) -> None:
    """ValueError naming the fix when no question can come, or --chat is asked of compare mode."""
    if not args.question and not args.chat:
        raise ValueError("no question: give --question TEXT (several times for several questions) or --chat "
                         "(questions from standard input, one per line)")
    if args.chat and args.attn == "compare":
        raise ValueError("--chat answers in one attention mode: use --attn prism or --attn dense (--attn compare "
                         "answers --question)")


def video_qa(args) -> VideoQA:
    """The flags checked (ValueError / VideoError naming the flag, before any model is loaded), then the VideoQA."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.decode_workers is not None and args.decode_workers < 1:
        raise ValueError(f"--decode-workers must be >= 1, got {args.decode_workers}")
    try:
        device = check_device(args.device)
    except ValueError as e:
        raise ValueError(f"--{e}") from None  # "--device 'gpu': ..."
    opts = VideoOptions(fps=args.fps, max_frames=args.max_frames, min_pixels=args.min_pixels,
                        max_pixels=args.max_pixels, total_pixels=args.total_pixels, start=args.start, end=args.end,
                        decode_workers=args.decode_workers, decode_processes=DECODERS[args.decoders])
    prism = prism_config(args)
    chunks = None
    if args.vision_chunk_frames is not None and args.chunk_tokens is None:
        raise ValueError("--vision-chunk-frames works with --chunk-tokens (chunked prefill): add --chunk-tokens N")
    if args.chunk_tokens is not None:
        try:
            chunks = ChunkConfig(args.chunk_tokens, args.vision_chunk_frames)
        except ValueError as e:
            flags = {"decoder_tokens": "--chunk-tokens", "vision_frames": "--vision-chunk-frames"}
            raise ValueError(re.sub(r"ChunkConfig\.(\w+)", lambda m: flags[m.group(1)], str(e))) from None
    try:
        stream_chunks = stream_chunks_of(args.stream_chunk_tokens)
    except ValueError as e:
        raise ValueError(str(e).replace("stream_chunk_tokens", "--stream-chunk-tokens")) from None
    if not (args.random_weights and args.model in SHIPPED_CONFIGS):
        resolve_model(args.model)  # fail fast, as load_model would (a tiny model is built here, once)
    from .video import check_range, probe

    check_range(probe(args.video), opts)  # fail fast on a bad video, before loading a model
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return VideoQA(args.model, args.attn, prism, opts, args.max_new_tokens, device, args.dtype, args.random_weights,
                   progress=not args.no_progress, vision=args.vision_attn, chunks=chunks, stream=args.stream,
                   stream_chunks=stream_chunks)


def run_line(mode: str, run: dict) -> str:
    """One run's timing line of the report: how its first token came, and the decoding."""
    return (f"{mode:>6}: {_stages(run)} = first token at {secs(run['first_token_s'])}; "
            f"decode {secs(run['decode_s'])} ({run['new_tokens']} tokens)")


def follow_up_report(r: dict, number: int) -> str:
    """A later question's report (the video, the prefix's layers and the warm-up are in the first one's)."""
    lines = [f"question {number}: {printable(r['question'])}", f"answer: {printable(r['answer'])}"]
    lines += [run_line(mode, run) for mode, run in r["runs"].items()]
    if "answers_agree" in r:
        lines.append(f"answers agree: {r['answers_agree']}")
    return "\n".join(lines)


def ask_questions(qa: VideoQA, args) -> None:
    """Each --question from the video's prefix: the reports printed as the answers come, or the JSON at the end."""
    results = []
    for number, question in enumerate(args.question, 1):
        result = qa(args.video, question)
        results.append(result)
        if not args.json:
            report = format_report(result) if number == 1 else "\n" + follow_up_report(result, number)
            print(report, flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))


def chat_questions(given: list[str], interactive: bool):
    """The --question values, then lines of standard input until an empty one or the end of the input."""
    yield from given
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.rstrip("\r\n")


def turn_report(qa: VideoQA, record: RunRecord, question: str, turn: int, echo: bool) -> str:
    """A chat turn's text: (the question,) the answer and its timing; the first turn also says what the video is."""
    lines = []
    if turn == 1 and qa.session.random_weights:
        lines.append("NOTE: random weights - the answer is meaningless (the attention and its timings are real).")
    if echo:
        lines.append(f"question {turn}: {printable(question)}")
    lines.append(f"answer: {printable(record.answer)}")
    if turn == 1:
        width, height = record.frame_size
        lines.append(f"frames: {record.frames} at {width}x{height} (width x height)  visual tokens: "
                     f"{record.visual_tokens}  prefix tokens: {record.prefix_tokens}  device: {qa.session.device_name}")
    lines.append(run_line(record.attn, record.to_dict()))
    if turn == 1 and qa.warmup_s:
        lines.append(f"one-time warm-up at load (kernel compiles; not in the timings above): {secs(qa.warmup_s)}")
    return "\n".join(lines)


def chat(qa: VideoQA, args) -> None:
    """--chat: one conversation about the video, each answer printed (or one JSON line written) as it comes."""
    interactive = sys.stdin.isatty()
    conversation = qa.chat(args.video)  # builds the video's prefix
    for turn, question in enumerate(chat_questions(args.question, interactive), 1):
        record = conversation.ask(question, qa.max_new_tokens)
        if args.json:
            print(json.dumps({"turn": turn, "question": question, **record.to_dict()}), flush=True)
        else:
            echo = not interactive or turn <= len(args.question)  # what the user did not just type
            print(("" if turn == 1 else "\n") + turn_report(qa, record, question, turn, echo), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_questions(args)
        qa = video_qa(args)
        if args.chat:
            chat(qa, args)
        else:
            ask_questions(qa, args)
    except (VideoError, ValueError, OSError) as e:  # ModelNotAvailableError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # ends a chat
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
