"""The CLI's text report of a VideoQA result."""
from __future__ import annotations


def printable(text: str) -> str:
    """Text safe for a terminal: control and other non-printing characters as escapes (\\x1c), newlines kept."""
    return "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii") for c in text)


CPU_TIMING_NOTE = ("timings on a CPU are not a speed measure: the Triton kernels run in the interpreter or as torch "
                   "twins here; GPU speed-ups are in benchmarks/results/*.md")


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _stages(run: dict) -> str:
    """How a run's first token came: the prefix's build (or its reuse), then the question's chunk."""
    question = f"question ({run['question_tokens']} tokens) {secs(run['question_s'])}"
    if run["reused"]:
        return f"video prefix reused ({run['prefix_tokens']} tokens) + {question}"
    vision = run["vision_s"] or 0.0
    if run["streamed"]:
        chunks = run["decoder_chunks_streamed"]
        also = f" and {chunks} of {run['decoder_chunks']} decoder chunks" if chunks else ""
        rest = "rest of the decoder prefill" if chunks else "decoder prefill"
        return (f"video decoded while the vision tower{also} ran {secs(run['video_s'])} (tower {secs(vision)} of it) + "
                f"{rest} {secs(run['prefill_s'])} + {question}")
    return (f"video {secs(run['video_s'])} + vision tower {secs(vision)} + decoder prefill "
            f"{secs(run['prefill_s'] - vision)} + {question}")


def format_report(r: dict) -> str:
    """A VideoQA result as the CLI's text report."""
    lines = []
    if r["random_weights"]:
        lines.append("NOTE: random weights - the answer is meaningless (the attention and its timings are real).")
    lines.append(f"question: {printable(r['question'])}")
    lines.append(f"answer: {printable(r['answer'])}")
    lines.append(f"frames: {r['frames']} at {r['frame_size'][0]}x{r['frame_size'][1]} (width x height)  "
                 f"visual tokens: {r['visual_tokens']}  total tokens: {r['total_tokens']}  device: {r['device']}")
    for mode, run in r["runs"].items():
        dens = ""
        if mode == "prism" and run["mean_density"] is not None:
            dens = (f"  prefix mean density {run['mean_density']:.3f}, sparse in {run['sparse_layers']}/{run['layers']} "
                    "layers")
            if run["dense_reasons"]:
                dens += f" (dense: {'; '.join(run['dense_reasons'])})"
        lines.append(f"{mode:>6}: {_stages(run)} = first token at {secs(run['first_token_s'])}; "
                     f"decode {secs(run['decode_s'])} ({run['new_tokens']} tokens){dens}")
    if r.get("layers_vs_dense"):
        lines.append("per decoder layer of the video prefix, Prism against dense attention on the same inputs:")
        for row in r["layers_vs_dense"]:
            what = (f"attention output rel. error vs dense {row['dense_rel_err']:.2e}" if row["sparse"]
                    else f"ran dense ({row['reason']})")
            lines.append(f"  layer {row['layer']:>2}: kept {row['kept_blocks']}/{row['total_blocks']} blocks "
                         f"({row['density']:.1%}), {what}")
        if r["random_weights"]:
            lines.append("  (random weights spread attention evenly, so every dropped block costs accuracy; on real "
                         "weights see benchmarks/results/fidelity.md)")
    if "first_token_speedup" in r:
        if r["device"] == "cpu":
            lines.append(CPU_TIMING_NOTE)
        else:
            what = f"first token {r['first_token_speedup']:.2f}x sooner"
            if "prefill_speedup" in r:
                decoder = "decoder " if r.get("streamed") else ""
                what = f"{decoder}prefill speed-up {r['prefill_speedup']:.2f}x, {what}"
            elif not any(run["reused"] for run in r["runs"].values()):
                what += " (decoder prefills not compared: Prism's ran pipelined behind the decoding)"
            lines.append(f"on {r['device']}: {what} (dense = transformers' SDPA in the vision tower and the decoder; "
                         f"prism = {r['vision_attention']} vision attention + Prism)")
        lines.append(f"answers agree: {r['answers_agree']}")
    if r.get("warmup_s"):
        lines.append(f"one-time warm-up at load (kernel compiles; not in the timings above): {secs(r['warmup_s'])}")
    return "\n".join(lines)
