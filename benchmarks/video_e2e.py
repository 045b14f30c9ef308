"""Time to the first answer token on a long video, per stage: Qwen2.5-VL-7B and Qwen3-VL-8B (shipped configs,
random weights, bf16) on a CUDA GPU.

For each number of visual tokens, a synthetic video (random frames of 32 x 56 patches: 448 visual tokens per
temporal patch) goes through
- the processor: the model's real video processor and a chat prompt (the frames are already decoded and sized,
  as qwen-vl-utils hands them over; file decoding is not timed here). The transformers row makes the pixels on
  the CPU (transformers' default); prism_mm's rows on the GPU (the processor's device=, as prism_mm's pipeline
  does; the forward then takes the same CPU-made pixels, equal up to float rounding). Both times are recorded,
- one prefill forward of the whole model (model(**inputs), last-position logits, KV cache on, as generate's
  first step), timed as vision tower (sync hooks around it) and the rest (decoder prefill + first-token logits).
Rows:
- transformers (sdpa): the model as users run it today (SDPA per window / frame in the tower, SDPA decoder)
- varlen vision + dense: prism_mm.vision's batched attention in the tower, SDPA decoder
- varlen vision + Prism 0.25 / 0.1: the decoder on the Prism sparse kernel at a fixed density (sink, diagonal,
  stripes and random blocks in every layer: random weights give flat attention, which selects nearly dense)
- with --layer-densities FIDELITY_JSON: one more row at per-layer densities measured on real weights (the mean
  over heads of each layer's density in benchmarks.fidelity's "prism_head_density", for --layer-density-knob at
  --layer-density-tokens; layers mapped by relative depth when the source model has another layer count)
- prism_mm's rows run with its fused RMSNorm modules (prism_mm.norms, enable_prism's default: one Triton launch per
  norm in the decoder and Qwen2.5-VL's tower), the transformers row with transformers' own; with --norm-ablation also
  dense and Prism 0.1 with transformers' norms (what the norms contribute)
Each point: the mean of --reps forwards after an untimed warm-up forward per row (at --warmup-visual-tokens) and one
at the point's own size;
peak GPU memory. The varlen rows also zero-pad the tower's MLP widths to GEMM-friendly sizes (prism_mm.vision.
align_mlp_widths, as enable_prism does; same outputs); the transformers row runs the tower as shipped, first.
A second table gives the host time per decoder layer (the GPU held busy by a sleep before every 4th layer, so the host
never waits on a full launch queue: its own cost, running ahead as in a prefill, and apart from it the layers right
after a sync) for dense SDPA and Prism's real selection path with max_density 1.0 (no sync) and 0.8 (one sync per
layer, the former default), and dense and Prism 1.0 with the fused RMSNorm modules, with the peak memory of those
decoder forwards. A third, paired table (host_pairs) times two modes in one forward, on alternate decoder layers (the
host's speed drifts between forwards by more than the few percent it compares; --pair-forwards per pair).

    python -m benchmarks.video_e2e                        # both models: benchmarks/results/video_e2e-<device>.*
    python -m benchmarks.video_e2e --models Qwen/Qwen3-VL-8B-Instruct --merge
    python -m benchmarks.video_e2e --smoke --out /tmp/e2e # tiny models on the CPU: checks the code path only
    python -m benchmarks.video_e2e --layer-densities benchmarks/results/fidelity-qwen2.5-coder-0.5b.json --merge
    python -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 32768 --host-time-only --merge
    python -m benchmarks.video_e2e --models Qwen/Qwen2.5-VL-7B-Instruct --tokens 131072 --norm-ablation --out /tmp/e2e
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import sys
import statistics
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from benchmarks.common import Results, describe_runs, fixed_density_selection, model_panels, \
    register_benchmark_attentions, run_info, save_figure
from prism_mm import PrismConfig
from prism_mm.attention import ATTN_NAME
from prism_mm.models import load_model, set_attention, vision_tower
from prism_mm.testing.tiny import build_tiny_model, build_tiny_processor
from prism_mm.vision import align_mlp_widths

MODELS = ["Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"]
FRAME_PATCHES = (32, 56)  # patches per frame (height, width)
# (label, vision attention, decoder density (None: dense), prism_mm's fused RMSNorm modules)
ROWS = [("transformers (sdpa)", "sdpa", None, False), ("varlen vision + dense", "varlen", None, True),
        ("varlen vision + Prism 0.25", "varlen", 0.25, True), ("varlen vision + Prism 0.1", "varlen", 0.1, True)]
BS = 128
# With --norm-ablation: prism_mm's rows with transformers' RMSNorm modules
NORM_ABLATION_ROWS = [("varlen vision + transformers' norms + dense", "varlen", None, False),
                      ("varlen vision + transformers' norms + Prism 0.1", "varlen", 0.1, False)]


def synthetic_frames(vision_config, visual_tokens: int, frame_patches=FRAME_PATCHES, seed: int = 0) -> torch.Tensor:
    """uint8 frames [T, 3, H, W] whose video gives about `visual_tokens` tokens (a whole number of temporal patches)."""
    merge, temporal, patch = vision_config.spatial_merge_size, vision_config.temporal_patch_size, vision_config.patch_size
    per_t = frame_patches[0] * frame_patches[1] // merge**2
    t = max(1, math.ceil(visual_tokens / per_t))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t * temporal, 3, frame_patches[0] * patch, frame_patches[1] * patch), generator=g,
                         dtype=torch.uint8)


def process(processor, frames: torch.Tensor, question: str = "What happens in this video?",
            device=None) -> tuple[dict, float]:
    """The processor call of prism_mm.pipelines.video.build_inputs on decoded frames: (inputs, seconds); `device`: where
    the video processor makes the pixels (None: the CPU, as transformers does by default)."""
    t0 = time.perf_counter()
    messages = [{"role": "user", "content": [{"type": "video", "video": "clip"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = frames.shape[0]
    meta = {"fps": 2.0, "frames_indices": list(range(n)), "total_num_frames": n}
    inputs = processor(text=[text], videos=[frames], video_metadata=[meta], do_resize=False, do_sample_frames=False,
                       return_tensors="pt", **({"device": str(device)} if device is not None else {}))
    if device is not None:
        sync(device)
    return dict(inputs), time.perf_counter() - t0


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_prefill(model, inputs: dict, reps: int) -> dict:
    """Mean over `reps` prefill forwards: whole forward, vision tower (model.prism_stats hooks); peak memory."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    totals, visions = [], []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(**inputs, use_cache=True, logits_to_keep=1)
        sync(device)
        totals.append(time.perf_counter() - t0)
        visions.append(model.prism_stats.vision_seconds or 0.0)
    return {"prefill_s": sum(totals) / reps, "vision_s": sum(visions) / reps, "reps": reps, "prefill_runs": totals,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def layer_densities(path: Path, knob: str, tokens: int, layers: int) -> list[float]:
    """Per decoder layer (`layers` of them) the mean-over-heads density a benchmarks.fidelity results file recorded
    for `knob` (e.g. "0.93", "cutoff@0.01") at `tokens`, or a benchmarks.default_setting file for a setting (e.g.
    "prism@0.99"), mapped by relative depth onto `layers` layers."""
    import json

    data = json.loads(Path(path).read_text())
    if "by_tokens" in data:
        per_layer = data["by_tokens"].get(str(tokens), {}).get("prism_head_density", {}).get(knob)
        means = [sum(h) / len(h) for _, h in sorted(per_layer.items(), key=lambda kv: int(kv[0]))] if per_layer else None
    else:  # a benchmarks.default_setting results file: the perplexity forward over the unseen text
        row = next((r for r in data["rows"] if r["kind"] == "perplexity" and r["text"] == "unseen"
                    and r["tokens"] == tokens and r["setting"] == knob), None)
        means = row["layer_density"] if row else None
    if not means:
        raise SystemExit(f"{path} has no per-layer densities for knob {knob!r} at {tokens} tokens")
    src = len(means)
    return [means[round(i * (src - 1) / max(layers - 1, 1))] for i in range(layers)]


def use_row(model, vision: str, density) -> None:
    """Switch the model to one row's attention: the tower's, and the decoder's (SDPA or the fixed-density kernel)."""
    set_attention(model, "dense", vision)
    if density is not None:
        model.set_attn_implementation({"text_config": "prism_fixed"})


@functools.lru_cache(maxsize=None)
def sleep_cycles_per_ms() -> float:
    """GPU clock cycles per millisecond of torch.cuda._sleep (calibrated with events, once per process)."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(10_000_000)
    b.record()
    torch.cuda.synchronize()
    return 10_000_000 / a.elapsed_time(b)


def layer_host_seconds(layers, forward, device, sleep_ms: float = 40.0, every: int = 4) -> list[tuple[float, bool]]:
    """(host seconds, right after a sync) of each decoder layer's forward during `forward()`, with the GPU held busy:
    before every `every`-th layer a sync and a GPU sleep longer than the next `every` layers' host work, so no launch
    waits on a full queue and the time is the host's own. The layers between syncs run ahead of the GPU as in a real
    prefill; the layer right after a sync pays for the host waking from it (a layer that synchronises inside shows
    about the sleep). On the CPU: the plain layer times, none after a sync."""
    cuda = torch.device(device).type == "cuda"
    cycles = int(sleep_ms * sleep_cycles_per_ms()) if cuda else 0
    times: list[tuple[float, bool]] = []
    started: dict = {}
    count = [0]

    def pre(module, args, kwargs):
        synced = cuda and count[0] % every == 0
        if synced:
            torch.cuda.synchronize()
            torch.cuda._sleep(cycles)
        count[0] += 1
        started[module] = (time.perf_counter(), synced)

    def post(module, args, kwargs, out):
        t0, synced = started[module]
        times.append((time.perf_counter() - t0, synced))

    hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in layers]
    hooks += [m.register_forward_hook(post, with_kwargs=True) for m in layers]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    sync(device)
    return times


@contextlib.contextmanager
def attention_call_seconds(names: tuple[str, ...] = ("sdpa", ATTN_NAME)):
    """Inside: every call of these AttentionInterface entries is timed on the host (perf_counter around the call) and
    appended to the yielded list; the entries are registered back as they were on leaving."""
    from transformers import AttentionInterface

    originals = {name: AttentionInterface()[name] for name in names}
    calls: list[float] = []

    def timed(fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            calls.append(time.perf_counter() - t0)
            return result
        return call

    for name, fn in originals.items():
        AttentionInterface.register(name, timed(fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            AttentionInterface.register(name, fn)


class NormSwitch:
    """Switches a model between transformers' RMSNorm modules and prism_mm's fused ones (the host table's modes)."""

    def __init__(self, model):
        from prism_mm.norms import RMS_NORM_CLASSES, fuse_rms_norms

        found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
                 if type(child).__name__ in RMS_NORM_CLASSES]
        fuse_rms_norms(model)
        self.pairs = [(parent, name, child, getattr(parent, name)) for parent, name, child in found]
        self.use(False)

    def use(self, fused: bool, layers=None) -> None:
        """Every norm fused or not; with `layers` (decoder layer modules -> fused or not), the norms inside those
        layers as given and the rest (the final norm, the tower's) as `fused`."""
        owner = {id(m): value for layer, value in (layers or {}).items() for m in layer.modules()}
        for parent, name, original, swapped in self.pairs:
            setattr(parent, name, swapped if owner.get(id(parent), fused) else original)

    @property
    def fused(self) -> bool:
        """The model holds the fused modules now (read from the model, not from the last use())."""
        from prism_mm.norms import FusedRMSNorm

        return bool(self.pairs) and all(isinstance(getattr(parent, name), FusedRMSNorm) for parent, name, *_ in self.pairs)


def decoder_forward(model, inputs: dict):
    """(a no-argument function running the text decoder alone over the prompt's token embeddings with text MRoPE
    positions and no KV cache, the prompt's length): the host tables' forward."""
    device = next(model.parameters()).device
    lm = model.model.language_model
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
    n = embeds.shape[1]
    pos = torch.arange(n, device=device)[None].expand(3, 1, n)
    if model.config.model_type == "qwen3_vl":
        pos = torch.cat([torch.arange(n, device=device)[None, None], pos], 0)

    def forward():
        with torch.no_grad():
            lm(inputs_embeds=embeds, position_ids=pos, use_cache=False)

    return forward, n


# Paired layers: (A, B) run on alternate decoder layers of the same forward, so both are timed within milliseconds of
# each other on the same host state. Each mode is (attention, fused norms).
PAIR_MODES = {"transformers dense": ("sdpa", False), "dense + fused norms": ("sdpa", True),
              "Prism + fused norms": ("prism", True), "Prism, transformers' norms": ("prism", False)}
PAIRS = (("Prism + fused norms", "transformers dense"),  # prism_mm's defaults against transformers as shipped
         ("Prism + fused norms", "dense + fused norms"),  # attention for attention
         ("Prism, transformers' norms", "transformers dense"),
         ("transformers dense", "transformers dense"))  # the control: how far from 1.0 the method reads


def check_pair_forwards(forwards: int) -> int:
    if not isinstance(forwards, int) or forwards < 2 or forwards % 2:
        raise ValueError(f"host_pairs needs an even number of forwards >= 2, got {forwards!r}")
    return forwards


def pair_samples(roles: list[int], synced: list[bool]) -> tuple[list[int], list[int]]:
    """The decoder layers whose host times one host_pairs forward compares, per role (0: A, 1: B): those running ahead
    of the GPU, neither synced nor right after a synced one; a role left with none (a tiny decoder) keeps all its
    layers."""
    kept = ([], [])
    for i, role in enumerate(roles):
        if not synced[i] and not (i > 0 and synced[i - 1]):
            kept[role].append(i)
    return tuple(mine or [i for i, r in enumerate(roles) if r == role] for role, mine in enumerate(kept))


def pair_stats(forwards: list[tuple]) -> dict:
    """host_pairs' numbers from its timed forwards, each (layer seconds, role per layer, synced per layer, attention
    call seconds per layer or None): per forward the ratio of A's median layer to B's over pair_samples; the geometric
    mean of each two consecutive forwards (opposite parity); their median and range; the pooled medians (and of the
    attention calls, where given)."""
    ratios, times, attention = [], ([], []), ([], [])
    for layers, roles, synced, calls in forwards:
        mine = pair_samples(roles, synced)
        ratios.append(statistics.median(layers[i] for i in mine[0]) / statistics.median(layers[i] for i in mine[1]))
        for role in (0, 1):
            times[role].extend(layers[i] for i in mine[role])
            if calls is not None:
                attention[role].extend(calls[i] for i in mine[role])
    balanced = [math.sqrt(x * y) for x, y in zip(ratios[::2], ratios[1::2])]  # one of each parity
    stats = {"ratio_median": statistics.median(balanced), "ratio_min": min(balanced), "ratio_max": max(balanced),
             "ratios": ratios, "a_ms_per_layer": 1e3 * statistics.median(times[0]),
             "b_ms_per_layer": 1e3 * statistics.median(times[1]), "layer_samples": len(times[0]) + len(times[1])}
    if attention[0] and attention[1]:
        stats.update(a_attention_ms=1e3 * statistics.median(attention[0]),
                     b_attention_ms=1e3 * statistics.median(attention[1]))
    return stats


def host_pairs(model, inputs: dict, norms: NormSwitch, forwards: int = 20, pairs=PAIRS) -> list[dict]:
    """Host time per decoder layer, two modes at a time in one forward: mode A on every other decoder layer and B on
    the rest, the parity swapped every other forward. The host of a lent machine changes speed by +-15% between
    forwards and up to 2x within a run, so timing the modes in separate forwards (host_time) cannot resolve a few
    percent; layers a millisecond apart share the host's state.
    Per forward, the ratio of A's median layer to B's over the layers that run ahead of the GPU (see
    layer_host_seconds), leaving out also the layer right after each synced one (it pays for the host waking: ~8%
    slower on the H200 host): with a sync before every 4th layer that leaves one even and one odd layer per four.
    Each two forwards of opposite parity give one ratio, their geometric mean (a position effect cancels). A row per
    pair: the median of those over `forwards` (even) forwards, their range, the per-forward ratios, the pooled
    medians, the attention calls' medians and every forward's layer times (`forward_layers`). Prism runs its real
    selection path (max_density 1.0: no sync). A mode may be paired with itself (the control)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prism_mm.attention import prism_attention_forward

    check_pair_forwards(forwards)
    device = next(model.parameters()).device
    lm = model.model.language_model
    if len(lm.layers) < 2:
        raise ValueError("host_pairs needs a decoder of at least 2 layers (the modes alternate over them)")
    forward, n = decoder_forward(model, inputs)
    config = PrismConfig.video(max_density=1.0, min_sparse_len=0)  # one object: every layer resolves it once
    for m in model.modules():
        if hasattr(m, "prism"):
            m.prism.config = config
    functions = {"sdpa": sdpa_attention_forward, "prism": prism_attention_forward}
    per_layer: list = [None] * len(lm.layers)  # the attention function of each layer in this forward
    calls: list[float] = []

    def paired(module, *args, **kwargs):
        fn = per_layer[module.layer_idx]
        t0 = time.perf_counter()
        result = fn(module, *args, **kwargs)
        calls.append(time.perf_counter() - t0)
        return result

    original = AttentionInterface()[ATTN_NAME]
    rows = []
    try:
        set_attention(model, "prism")  # the decoder calls the "prism" entry, which dispatches per layer below
        AttentionInterface.register(ATTN_NAME, paired)
        for a, b in pairs:
            timed, raw = [], []  # by role (0: A, 1: B), so that a mode paired with itself keeps two sets
            for f in tqdm(range(-2, forwards), desc=f"host pairs: {a} / {b}", leave=False):  # 2 warm-ups, one per parity
                roles = [(i + f) % 2 for i in range(len(lm.layers))]
                for i, role in enumerate(roles):
                    per_layer[i] = functions[PAIR_MODES[(a, b)[role]][0]]
                norms.use(False, {layer: PAIR_MODES[(a, b)[role]][1] for layer, role in zip(lm.layers, roles)})
                calls.clear()
                layers = layer_host_seconds(lm.layers, forward, device)
                if len(calls) != len(layers):
                    raise RuntimeError(f"{len(calls)} attention calls in {len(layers)} decoder layers")
                if f < 0:
                    continue
                timed.append(([t for t, _ in layers], roles, [synced for _, synced in layers], list(calls)))
                raw.append({"a_on_even_layers": roles[0] == 0, "layer_us": [round(1e6 * t) for t, _ in layers],
                            "synced": [i for i, (_, synced) in enumerate(layers) if synced]})
            rows.append({"a": a, "b": b, "tokens": n, "forwards": forwards, **pair_stats(timed),
                         "forward_layers": raw})
            print({k: v for k, v in rows[-1].items() if k != "forward_layers"}, flush=True)
    finally:
        AttentionInterface.register(ATTN_NAME, original)
        norms.use(False)
    return rows


def host_time(model, inputs: dict, norms: NormSwitch, reps: int = 4) -> list[dict]:
    """Per mode (dense SDPA; Prism's real selection path with max_density 1.0, no sync, and 0.8, one sync per layer;
    all with transformers' RMSNorm modules; then dense and Prism 1.0 with prism_mm's fused ones, through `norms`):
    the host milliseconds per decoder layer (median over layers and `reps` forwards per mode, the modes interleaved,
    GPU held busy, see layer_host_seconds) and of the attention call inside each layer (timed where the model makes it,
    between the layer's other work), the GPU-synced time of a plain decoder forward and its peak memory (no KV
    cache)."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    lm = model.model.language_model
    forward, n = decoder_forward(model, inputs)

    modes = [("dense sdpa", None, False), ("prism, max_density 1.0", 1.0, False), ("prism, max_density 0.8", 0.8, False),
             ("dense sdpa + fused norms", None, True), ("prism + fused norms, max_density 1.0", 1.0, True)]

    def use(max_density, fused):
        norms.use(fused)
        if max_density is None:
            set_attention(model, "dense")
            return
        for m in model.modules():
            if hasattr(m, "prism"):
                m.prism.config = PrismConfig.video(max_density=max_density, min_sparse_len=0)
        set_attention(model, "prism")

    rows = []
    for mode, max_density, fused in modes:
        use(max_density, fused)
        forward()  # warm-up
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        totals = []
        for _ in range(reps):
            t0 = time.perf_counter()
            forward()
            sync(device)
            totals.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append({"mode": mode, "tokens": n, "total_s": sorted(totals)[reps // 2], "peak_gib": peak,
                     "fused_norms": norms.fused,
                     "mean_density": model.prism_stats.mean_density if max_density is not None else 1.0})
    timed: dict[str, list] = {mode: [] for mode, _, _ in modes}
    with attention_call_seconds() as calls:
        for _ in range(reps):  # the modes interleaved, so that a slow stretch of the host falls on all of them
            for mode, max_density, fused in modes:
                use(max_density, fused)
                calls.clear()
                layers = layer_host_seconds(lm.layers, forward, device)
                if len(calls) != len(layers):
                    raise RuntimeError(f"{len(calls)} attention calls in {len(layers)} decoder layers")
                timed[mode] += [(t, synced, a) for (t, synced), a in zip(layers, calls)]
    for row in rows:
        ahead = [(t, a) for t, synced, a in timed[row["mode"]] if not synced] or \
            [(t, a) for t, _, a in timed[row["mode"]]]
        woken = [t for t, synced, _ in timed[row["mode"]] if synced]
        hosts = [t for t, _ in ahead]
        row.update({"host_ms_per_layer": 1e3 * statistics.median(hosts), "host_ms_per_layer_min": 1e3 * min(hosts),
                    "attention_host_ms": 1e3 * statistics.median(a for _, a in ahead),
                    "layer_samples": len(hosts),
                    "host_ms_after_sync": 1e3 * statistics.median(woken) if woken else None})
        print(row, flush=True)
    return rows


def measure(model, processor, name: str, tokens: list[int], reps: int, device, gen, frame_patches=FRAME_PATCHES,
            block_size: int = BS, warmup_tokens: int = 8192, host: bool = True,
            extra_rows: tuple = (), rows_too: bool = True, pair_forwards: int = 20
            ) -> tuple[list[dict], list[dict], list[dict]]:
    """Every row at every size for one loaded model (rows outer: transformers' row runs on the tower as shipped,
    before prism_mm.vision.align_mlp_widths pads its MLPs for the varlen rows); then the host-time rows (host_time's
    and host_pairs', the latter with `pair_forwards` forwards per pair).
    extra_rows: (label, "varlen", density or [density per decoder layer], fused norms) rows after ROWS."""
    heads = model.config.get_text_config().num_attention_heads
    selections: dict = {}
    register_benchmark_attentions(selections)
    prepared = {}
    for target in [warmup_tokens, *tokens]:
        frames = synthetic_frames(model.config.vision_config, target, frame_patches)
        inputs, processor_s = process(processor, frames)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
        visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
        on_device_s = None  # prism_mm's pipeline makes the pixels on the model's GPU (transformers' device=)
        if device.type == "cuda":
            process(processor, frames, device=device)  # warm-up: CUDA kernels of the processor's ops
            on_device, on_device_s = process(processor, frames, device=device)
            del on_device
            torch.cuda.empty_cache()  # its float intermediates (GBs at 128K) are not kept for the forwards
        prepared[target] = (inputs, (processor_s, on_device_s), visual, frames.shape)
        del frames
    rows, aligned = [], False
    norms = NormSwitch(model)  # transformers' RMSNorm modules or prism_mm's fused ones, per row

    def run(label: str, vision: str, density, fused: bool) -> None:
        nonlocal aligned
        norms.use(fused)
        if vision == "varlen" and not aligned:
            aligned = align_mlp_widths(vision_tower(model)) > 0
        for target in tqdm([warmup_tokens, *tokens], desc=f"{name.split('/')[-1]} {label}", leave=False):
            cpu_inputs, (cpu_s, on_device_s), visual, shape = prepared[target]
            # transformers' row: pixels made on the CPU, as shipped; ours: on the model's GPU when it has one
            on_gpu = vision != "sdpa" and on_device_s is not None
            processor_s = on_device_s if on_gpu else cpu_s
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cpu_inputs.items()}
            n = inputs["input_ids"].shape[1]
            for key in [k for k in selections if len(k) == 3]:  # per-layer selections of another row
                del selections[key]
            if isinstance(density, list):
                for i, d in enumerate(density):
                    selections[(i, heads, n)] = fixed_density_selection(heads, n, d, gen, block_size, device)
                selections[(heads, n)] = selections[(0, heads, n)]
            elif density is not None:
                selections[(heads, n)] = fixed_density_selection(heads, n, density, gen, block_size, device)
            use_row(model, vision, density)
            held = {id(sel): sel for key, sel in selections.items() if key[-1] == n} if density is not None else {}
            held_gib = sum(t.numel() * t.element_size() for sel in held.values()
                           for t in (sel.kv_indices, sel.kv_num_blocks)) / 2**30
            timed_prefill(model, inputs, 1)  # compiles (also those specialised on this size), cuDNN plans and
            if target == warmup_tokens:      # allocator growth stay out of the timings
                continue
            row = {"model": name, "visual_tokens": visual, "tokens": n, "row": label, "vision_attention": vision,
                   "vision_mlp_aligned": aligned and vision == "varlen", "fused_norms": norms.fused,
                   "decoder_density": (sum(density) / len(density) if isinstance(density, list) else
                                       density if density is not None else 1.0),
                   **({"layer_densities": density} if isinstance(density, list) else {}), "processor_s": processor_s,
                   "processor_device": device.type if on_gpu else "cpu", "processor_cpu_s": cpu_s,
                   "frames": shape[0], "frame_size": [shape[-1], shape[-2]], "benchmark_selections_gib": held_gib,
                   **timed_prefill(model, inputs, reps)}
            row["decoder_s"] = row["prefill_s"] - row["vision_s"]
            row["first_token_s"] = row["processor_s"] + row["prefill_s"]
            rows.append(row)
            print({k: v for k, v in row.items() if k != "prefill_runs"}, flush=True)
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()

    for spec in [*ROWS, *extra_rows] if rows_too else []:
        run(*spec)
    host_rows, pair_rows = [], []
    if host:
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared[tokens[0]][0].items()}
        stamp = {"model": name, "measured": time.strftime("%Y-%m-%d %H:%M")}
        host_rows = [{**stamp, **h} for h in host_time(model, inputs, norms)]
        pair_rows = [{**stamp, **h} for h in host_pairs(model, inputs, norms, pair_forwards)]
    norms.use(False)
    for visual in {r["visual_tokens"] for r in rows}:
        base = next(r for r in rows if r["visual_tokens"] == visual and r["row"] == ROWS[0][0])
        ours_dense = next(r for r in rows if r["visual_tokens"] == visual and r["row"] == ROWS[1][0])
        for r in rows:
            if r["visual_tokens"] == visual:
                r["speedup_vs_transformers"] = base["first_token_s"] / r["first_token_s"]
                r["prefill_speedup_vs_transformers"] = base["prefill_s"] / r["prefill_s"]
                r["prefill_speedup_vs_varlen_dense"] = ours_dense["prefill_s"] / r["prefill_s"]
                r["vision_speedup_vs_transformers"] = base["vision_s"] / max(r["vision_s"], 1e-9)
    return rows, host_rows, pair_rows


def load(name: str, device, smoke: bool):
    """(model with Prism set up and stats hooks, its processor): random weights of a shipped config, or tiny."""
    if smoke:
        model_type = {"Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl", "Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl"}[name]
        model = build_tiny_model(model_type, layers=2)
        from prism_mm.models import enable_prism

        enable_prism(model, PrismConfig.video(min_sparse_len=0, block_size=16), vision="sdpa", fused_norms=False)
        return model, build_tiny_processor(model_type)
    model, _ = load_model(name, attn="prism", prism=PrismConfig.video(), dtype="bfloat16", device_map=str(device),
                          random_weights=True, vision="sdpa", fused_norms=False)  # measure(): per row
    return model, build_tiny_processor(model.config.model_type, real_vocab=True)


def pair_forwards_arg(text: str) -> int:
    """--pair-forwards, checked as the command line is parsed (before any row is measured)."""
    try:
        return check_pair_forwards(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, help="shipped model names (random weights from their config)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[32768, 65536, 131072], help="visual tokens")
    ap.add_argument("--reps", type=int, default=2, help="timed forwards per point (after one warm-up per row)")
    ap.add_argument("--warmup-visual-tokens", type=int, default=8192, help="size of each row's untimed warm-up forward")
    ap.add_argument("--no-host-time", action="store_true", help="skip the host-time table (kept from --merge's file)")
    ap.add_argument("--host-time-only", action="store_true",
                    help="only the host-time table (at the first --tokens), into --merge's file; its rows are kept")
    ap.add_argument("--pair-forwards", type=pair_forwards_arg, default=20,
                    help="forwards per pair of modes in the paired-layer host table (host_pairs; even; 2 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny random models on the CPU, small sizes (a code check)")
    ap.add_argument("--norm-ablation", action="store_true",
                    help="also the rows of NORM_ABLATION_ROWS: prism_mm's rows with transformers' RMSNorm modules")
    ap.add_argument("--layer-densities", type=Path, metavar="FIDELITY_JSON",
                    help="add a row at the per-layer densities a benchmarks.fidelity results file recorded on real weights")
    ap.add_argument("--layer-density-knob", default="0.93", help="which recorded selection (prism threshold or cutoff@c)")
    ap.add_argument("--layer-density-tokens", type=int, default=32768, help="at which recorded length")
    if "--smoke" in sys.argv:
        args = RESULTS_FILES.parse(ap)
        if args is None:
            return
        device, dev = torch.device("cpu"), None
        base = RESULTS_FILES.load(args.out) if args.merge else None
        args.tokens = [t for t in args.tokens if t <= 1024] or [128, 256]
        args.warmup_visual_tokens = min(args.warmup_visual_tokens, 64)
    else:
        started = RESULTS_FILES.parse_gpu_run(ap)
        if started is None:
            return
        args, dev, base = started
        device = torch.device("cuda")
    run = run_info(transformers=transformers.__version__)
    rows, host, pairs = [], [], []
    if base and (args.no_host_time or args.host_time_only):
        # kept: all of them without new host tables, else those of the models not measured now
        keep = (lambda h: True) if args.no_host_time else (lambda h: h["model"] not in args.models)
        host = [h for h in base["meta"].get("host_time", []) if keep(h)]
        pairs = [h for h in base["meta"].get("host_pairs", []) if keep(h)]
    for name in args.models:
        gen = torch.Generator(device=device).manual_seed(0)
        model, processor = load(name, device, args.smoke)
        shape = dict(frame_patches=(8, 12), block_size=16) if args.smoke else {}
        extra = ()
        if args.layer_densities:
            layers = model.config.get_text_config().num_hidden_layers
            dens = layer_densities(args.layer_densities, args.layer_density_knob, args.layer_density_tokens, layers)
            extra = ((f"varlen vision + Prism at real densities ({args.layer_densities.stem}, "
                      f"{args.layer_density_knob}, {args.layer_density_tokens // 1024}K)", "varlen", dens, True),)
        if args.norm_ablation:
            extra += tuple(NORM_ABLATION_ROWS)
        got, got_host, got_pairs = measure(model, processor, name, args.tokens, args.reps, device, gen,
                                           warmup_tokens=args.warmup_visual_tokens, host=not args.no_host_time,
                                           extra_rows=extra, rows_too=not args.host_time_only,
                                           pair_forwards=2 if args.smoke else args.pair_forwards, **shape)
        rows, host, pairs = rows + got, host + got_host, pairs + got_pairs
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.host_time_only:
            RESULTS_FILES.save({"device": dev or "cpu", "host_time": host, "host_pairs": pairs}, run, rows, args.out,
                               dev, base, quiet=True)
    if args.host_time_only:  # the rows and their runs stay as they were
        if base is None:
            raise SystemExit("--host-time-only updates an existing results file: add --merge")
        RESULTS_FILES.write({**base, "meta": {**base["meta"], "host_time": host, "host_pairs": pairs}},
                            RESULTS_FILES.stem(args.out, dev))
    else:
        RESULTS_FILES.save({"device": dev or "cpu", "host_time": host, "host_pairs": pairs}, run, rows, args.out, dev,
                           base)


def ordered(rows: list[dict]) -> list[dict]:
    """Rows by model (first seen), visual tokens, then ROWS order."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = [label for label, *_ in ROWS]
    rank = lambda label: labels.index(label) if label in labels else len(labels)  # noqa: E731 - extra rows last
    return sorted(rows, key=lambda r: (models.index(r["model"]), r["visual_tokens"], rank(r["row"]), r["row"]))


def table(data: dict) -> list[str]:
    meta = data["meta"]
    lines = [f"# Time to the first token on long videos (random weights, bf16) on {meta['device']}", "",
             ("Processor (decoded frames -> patches + prompt; where it makes the pixels in brackets: transformers' row "
              "on the CPU as shipped, prism_mm's on the GPU as its pipeline does; rows without it: the CPU), then one "
              "prefill forward of the whole model (vision "
              "tower timed by sync hooks; the rest is the decoder prefill and the first token's logits). "
              "Each point: mean of the listed forwards after one warm-up per row (runs after 16:00: also one at the point's "
              "size). The fixed-density rows hold their "
              "pre-drawn block selections through the forward (in brackets after the peak: Prism itself computes "
              "each layer's selection inside that layer and frees it). Runs:"), "",
             *describe_runs(meta), "",
             "| model | visual tokens | row | tower MLP aligned | RMSNorm | processor s (pixels on) | vision s | decoder s "
             "| first token s | vs transformers | prefill vs transformers | prefill vs varlen+dense | vision vs transformers "
             "| peak GiB (of it the benchmark's selections) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered(data["rows"]):
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else ""
        if peak and r.get("benchmark_selections_gib"):
            peak += f" ({r['benchmark_selections_gib']:.2f})"
        aligned = "yes" if r.get("vision_mlp_aligned") else "no"
        norm = "fused" if r.get("fused_norms") else "transformers'"
        lines.append(f"| {r['model'].split('/')[-1]} | {r['visual_tokens']} | {r['row']} | {aligned} | {norm} | "
                     f"{r['processor_s']:.2f} ({r.get('processor_device', 'cpu')}) | "
                     f"{r['vision_s']:.2f} | {r['decoder_s']:.2f} | {r['first_token_s']:.2f} | "
                     f"{r['speedup_vs_transformers']:.2f}x | {r['prefill_speedup_vs_transformers']:.2f}x | "
                     f"{r['prefill_speedup_vs_varlen_dense']:.2f}x | {r['vision_speedup_vs_transformers']:.1f}x | "
                     f"{peak} |")
    if meta.get("host_time"):
        lines += ["", "Host time per decoder layer (median over layers and 4 forwards per mode, the modes interleaved; a sync and a 40 ms GPU sleep before "
                  "every 4th layer, so the host never waits on a full launch queue: the host's own cost). \"running "
                  "ahead\": the layers between syncs, as in a prefill; \"after a sync\": the layer right after one "
                  "(rows without it were measured with a sync before every layer). A layer that synchronises shows "
                  "about the sleep. \"of it the attention call\": the median host time of the attention function "
                  "inside those layers (timed where the model calls it; blank in rows measured before it was). Then the GPU-synced decoder forward (no KV cache) and its peak memory. Prism's "
                  "real selection path, random weights:", "",
                  "| model | tokens | mode | host ms / layer, running ahead | vs dense | of it the attention call | "
                  "after a sync | vs dense | synced total s | peak GiB | mean density | measured |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        dense = {(h["model"], h["tokens"]): h for h in meta["host_time"] if h["mode"] == "dense sdpa"}
        for h in meta["host_time"]:
            base = dense.get((h["model"], h["tokens"]))
            ratio = f"{h['host_ms_per_layer'] / base['host_ms_per_layer']:.2f}x" if base else ""
            woken, woken_ratio = h.get("host_ms_after_sync"), ""
            if woken is not None and base and base.get("host_ms_after_sync"):
                woken_ratio = f"{woken / base['host_ms_after_sync']:.2f}x"
            peak = f"{h['peak_gib']:.2f}" if h.get("peak_gib") is not None else ""
            call = f"{h['attention_host_ms']:.3f}" if h.get("attention_host_ms") is not None else ""
            lines.append(f"| {h['model'].split('/')[-1]} | {h['tokens']} | {h['mode']} | {h['host_ms_per_layer']:.3f} | "
                         f"{ratio} | {call} | {'' if woken is None else f'{woken:.3f}'} | {woken_ratio} | "
                         f"{h['total_s']:.3f} | {peak} | {h['mean_density']:.3f} | {h.get('measured', '')} |")
    if meta.get("host_pairs"):
        lines += ["", "Host time per decoder layer, paired (host_pairs): mode A on every other decoder layer and B on "
                  "the rest of the same forward, swapped every other forward, so both are timed within milliseconds "
                  "on the same host state; GPU held busy as above. A / B: per forward, A's median layer over B's; "
                  "the geometric mean of each two forwards of opposite parity (the layer positions even out); the "
                  "median of those and its range:", "",
                  "| model | tokens | A | B | A / B | range | A ms / layer | B ms / layer | A's attention call ms | "
                  "B's attention call ms | forwards | measured |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for h in meta["host_pairs"]:
            lines.append(f"| {h['model'].split('/')[-1]} | {h['tokens']} | {h['a']} | {h['b']} | "
                         f"{h['ratio_median']:.3f} | {h['ratio_min']:.3f}-{h['ratio_max']:.3f} | "
                         f"{h['a_ms_per_layer']:.3f} | {h['b_ms_per_layer']:.3f} | {h['a_attention_ms']:.3f} | "
                         f"{h['b_attention_ms']:.3f} | {h['forwards']} | {h.get('measured', '')} |")
    return lines


def short_label(row: str) -> str:
    """A row's name on the plot's axis: "Prism real" for the real-density row (its source is in the table)."""
    row = row.replace("varlen vision + ", "varlen+").replace(" (sdpa)", "")
    return "varlen+Prism real" if "real densities" in row else row


def plot(data: dict, path: Path) -> None:
    """Per model, a stacked bar per (visual tokens, row): processor, vision tower, decoder + first token."""
    rows = data["rows"]
    fig, panels = model_panels(rows, 9, 5)
    stages = (("processor_s", "processor", "tab:gray"), ("vision_s", "vision tower", "tab:orange"),
              ("decoder_s", "decoder prefill + first token", "tab:blue"))
    for ax, model in panels:
        mine = [r for r in ordered(rows) if r["model"] == model]
        labels, bottom = [], None
        xs = range(len(mine))
        for key, label, color in stages:
            vals = [r[key] for r in mine]
            ax.bar(xs, vals, bottom=bottom, color=color, label=label)
            bottom = vals if bottom is None else [a + b for a, b in zip(bottom, vals)]
        for x, r in zip(xs, mine):
            labels.append(f"{r['visual_tokens'] // 1024}K {short_label(r['row'])}")
            ax.text(x, r["first_token_s"], f"{r['speedup_vs_transformers']:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), labels, fontsize=6, rotation=90)
        ax.set(ylabel="seconds to the first token", title=f"{model.split('/')[-1]} on {data['meta']['device']}")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


RESULTS_FILES = Results("video_e2e", key=lambda r: (r["model"], r["row"], r["visual_tokens"]), table=table, plot=plot)

if __name__ == "__main__":
    main()
