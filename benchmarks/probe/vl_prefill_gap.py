"""Probe: where the video_qa compare's prefill gap between dense and prism (every layer falling back to dense)
comes from. Random-weight Qwen2.5-VL-7B, the 80 s demo clip (35,840 visual tokens). Times model.forward alone and
generate(max_new_tokens=1) for both modes (medians of 3 after a warm-up), and the prism generate's top CUDA ops.
Run on a GPU: PYTHONPATH=. python benchmarks/probe/vl_prefill_gap.py /tmp/long.mp4. Results: vl_prefill_gap-h100.txt."""
import statistics
import sys
import time

import torch

from prism_mm.pipelines.video_qa import VideoQA, set_attention

qa = VideoQA("Qwen/Qwen2.5-VL-7B-Instruct", "compare", random_weights=True, max_new_tokens=1, progress=False)
prep = qa.prepare(sys.argv[1], "Describe the video.")
inputs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in prep.inputs.items()}


def timed(fn, reps=3):
    fn()
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


with torch.no_grad():
    for mode in ("dense", "prism", "dense", "prism"):
        set_attention(qa.model, mode)
        fwd = timed(lambda: qa.model(**inputs, logits_to_keep=1))
        gen = timed(lambda: qa.model.generate(**inputs, max_new_tokens=1, do_sample=False))
        print(f"{mode}: forward {fwd:.3f} s, generate(1 token) {gen:.3f} s", flush=True)
    set_attention(qa.model, "prism")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        qa.model.generate(**inputs, max_new_tokens=1, do_sample=False)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
