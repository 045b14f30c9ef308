"""Where the vision tower's time goes (GPU): one Qwen2.5-VL-7B tower forward (shipped config, random weights,
bf16) at ~64K visual tokens with prism_mm.vision's attention, under torch.profiler; top ops by CUDA time.

    python lab/vision_profile.py > lab/logs/vision_profile-<device>.txt
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transformers import AutoModelForImageTextToText  # noqa: E402

from prism_mm.models import set_attention, shipped_config  # noqa: E402
from prism_mm.testing.tiny import video_inputs  # noqa: E402

config = shipped_config("Qwen/Qwen2.5-VL-7B-Instruct")
config._attn_implementation = "sdpa"
with torch.device("cuda"):
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
model.model.language_model.layers = model.model.language_model.layers[:1]
inputs = video_inputs(model.config, frames=294, grid=32, grid_w=56)
pixels, thw = inputs["pixel_values_videos"].to("cuda", torch.bfloat16), inputs["video_grid_thw"].to("cuda")
set_attention(model, "dense", "varlen")
tower = model.model.visual
with torch.no_grad():
    for _ in range(2):
        tower(pixels, grid_thw=thw)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    tower(pixels, grid_thw=thw)
    torch.cuda.synchronize()
    print(f"tower forward: {time.perf_counter() - t0:.3f} s, {pixels.shape[0]} patches")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tower(pixels, grid_thw=thw)
        torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
