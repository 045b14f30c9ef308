"""The kernels at real sizes (8K-32K tokens, bf16/fp16, Qwen-VL head layouts) on a CUDA GPU.

Skipped without CUDA. The reference is the torch twin (query-chunked, so a full fp32 reference at 32K
fits); every output element is checked for having been written.
"""
import pytest
import torch
from conftest import rel_err
from generators import random_selection

from prism_mm import PrismConfig, RopeSpec, prism_attention
from prism_mm.attention import dense_attention
from prism_mm.kernels import torch_ops
from prism_mm.kernels.blocks import BandIndex, SelectSpec, causal_block_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize(
    "hq,hkv,q_len,kv_len,d,dtype",
    [
        (28, 4, 32768, 32768, 128, torch.bfloat16),  # Qwen2.5-VL-7B
        (32, 8, 16384, 16384, 128, torch.bfloat16),  # Qwen3-VL-8B
        (28, 4, 8191, 8191, 128, torch.float16),
        (16, 16, 8000, 8000, 64, torch.bfloat16),
        (14, 2, 8192 - 77, 8192 + 300, 80, torch.bfloat16),  # chunked prefill, head_dim 80
    ],
)
@pytest.mark.parametrize("density", [1.0, 0.15])
def test_sparse_kernel_real_sizes(hq, hkv, q_len, kv_len, d, dtype, density):
    from prism_mm.kernels.block_sparse import block_sparse_attention

    bs = 128
    q = torch.randn(1, hq, q_len, d, device="cuda", dtype=dtype)
    k = torch.randn(1, hkv, kv_len, d, device="cuda", dtype=dtype)
    v = torch.randn(1, hkv, kv_len, d, device="cuda", dtype=dtype)
    sel = random_selection(1, hq, q_len, kv_len, bs, density, "cuda")
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, sel, out=out)
    assert torch.isfinite(out).all(), "unwritten output elements"
    expected = torch_ops.block_sparse_attention(q.float(), k.float(), v.float(), sel)
    assert rel_err(out, expected) < TOL[dtype]
    if density == 1.0 and q_len <= 8192:
        assert rel_err(out, dense_attention(q.float(), k.float(), v.float())) < TOL[dtype]


@pytest.mark.parametrize("hq,hkv,n", [(28, 4, 32768), (32, 8, 16384 + 77)])
@pytest.mark.parametrize("cutoff", [None, 0.01])  # prism's per-band top-p, method="cutoff"
def test_estimation_kernels_real_sizes(hq, hkv, n, cutoff):
    from prism_mm.kernels import block_select, pool

    bs, d = 128, 128
    bands = RopeSpec(head_dim=d, theta=1e6).bands(64, 96)
    index = BandIndex.build(bands.high, bands.low, d, "cuda")
    nb = (n + bs - 1) // bs
    # Block-structured tokens so that the selection is sparse, not flat.
    q = (torch.randn(1, hq, nb, 1, d, device="cuda").expand(-1, -1, -1, bs, -1).reshape(1, hq, nb * bs, d)[:, :, :n]
         * 2 + 0.5 * torch.randn(1, hq, n, d, device="cuda")).bfloat16()
    k = (torch.randn(1, hkv, nb, 1, d, device="cuda").expand(-1, -1, -1, bs, -1).reshape(1, hkv, nb * bs, d)[:, :, :n]
         + 0.5 * torch.randn(1, hkv, n, d, device="cuda")).bfloat16()
    got_q, got_k = pool.pool_pair(q, k, bs, index)
    exp_q, exp_k = torch_ops.pool_bands(q, bs, index), torch_ops.pool_bands(k, bs, index)
    for g, e in (*zip(got_q, exp_q), *zip(got_k, exp_k)):
        assert rel_err(g, e) < 1e-5
    spec = SelectSpec(d, bs, 0.93, 0.93, cutoff=cutoff)  # TF32 scoring, the default on GPU
    sel = block_select.select_blocks(exp_q, exp_k, spec, n, n)
    got = sel.to_mask()
    assert (got.sum(-1) == sel.kv_num_blocks).all()
    expected = torch_ops.select_blocks(exp_q, exp_k, spec, n, n).to_mask()
    valid = causal_block_mask(n, n, bs, "cuda")
    assert not (got & ~valid).any()
    assert expected.sum() < 0.8 * valid.sum() * hq  # a real (sparse) selection
    assert (got != expected).sum().item() <= 2e-3 * valid.sum().item() * hq


def test_prism_attention_end_to_end_bf16():
    hq, hkv, n, d = 28, 4, 16384, 128
    rope = RopeSpec(head_dim=d, theta=1e6, mrope_section=(16, 24, 24))
    q = torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    cfg = PrismConfig.video(min_sparse_len=0, max_density=1.0)
    out, stats = prism_attention(q, k, v, cfg, rope=rope, return_stats=True)
    assert torch.isfinite(out).all() and stats.sparse
    sel = stats.selection
    expected = torch_ops.block_sparse_attention(q.float(), k.float(), v.float(), sel)
    assert rel_err(out, expected) < TOL[torch.bfloat16]
    # The torch path on the same GPU tensors selects (nearly) the same blocks.
    from prism_mm import estimate

    sel_t = estimate(q, k, cfg, rope.bands(*cfg.band_dims(d)), backend="torch")
    assert (sel_t.to_mask() != sel.to_mask()).float().mean() < 2e-3


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"])
def test_vision_tower_varlen_equals_sdpa_at_real_size(name):
    """The real vision towers (shipped configs, random weights, bf16) on 6 temporal patches of 32 x 56 patches:
    prism_mm.vision's batched attention against transformers' per-window / per-frame SDPA."""
    from transformers import AutoModelForImageTextToText

    from prism_mm.models import set_attention, shipped_config
    from prism_mm.testing.tiny import video_inputs

    config = shipped_config(name)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
    model.model.language_model.layers = model.model.language_model.layers[:1]  # the decoder is not under test
    inputs = video_inputs(model.config, frames=12, grid=32, grid_w=56)
    pixels = inputs["pixel_values_videos"].to("cuda", torch.bfloat16)
    thw = inputs["video_grid_thw"].to("cuda")
    tower = model.model.visual
    with torch.no_grad():
        ref = tower(pixels, grid_thw=thw).pooler_output
        set_attention(model, "dense", "varlen")
        out = tower(pixels, grid_thw=thw).pooler_output
    assert model.config.vision_config._attn_implementation == "prism_flash_varlen"
    assert torch.isfinite(out).all() and rel_err(out, ref) < TOL[torch.bfloat16]


def test_prism_layer_makes_no_host_sync():
    """A Prism decoder call at 16K tokens (selection + sparse kernel, max_density 1.0) never waits for the GPU."""
    q = torch.randn(1, 28, 16384, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4, 16384, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cfg = PrismConfig.video(min_sparse_len=0)
    prism_attention(q, k, v, cfg)  # compiles outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = prism_attention(q, k, v, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_prism_attention_on_second_gpu_while_first_is_current():
    """Triton launches follow their inputs' device: tensors on cuda:1 with cuda:0 current give dense's answer."""
    torch.cuda.set_device(0)
    q = torch.randn(1, 28, 8192, 128, device="cuda:1", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 4, 8192, 128, device="cuda:1", dtype=torch.bfloat16) for _ in range(2))
    out, stats = prism_attention(q, k, v, PrismConfig(min_sparse_len=0).with_threshold(1.0), return_stats=True)
    assert out.device == q.device and stats.sparse and torch.cuda.current_device() == 0
    assert rel_err(out, dense_attention(q, k, v)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("rows,cols", [(33_000, 3584), (65_537, 1280), (4_099, 4096), (50_000, 128)])
def test_rms_norm_real_sizes_bf16(rows, cols):
    """The fused RMSNorm at Qwen-VL widths (7B text 3584, its tower 1280, 8B text 4096, per-head 128) in bf16 with a
    bf16 weight: within one bf16 rounding step of transformers' formula on every element (bf16 is wrong in the
    interpreter, so only here)."""
    from prism_mm.kernels.rms_norm import rms_norm

    x = (2 * torch.randn(rows, cols, device="cuda") + 0.3).to(torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(cols, device="cuda")).to(torch.bfloat16)
    got, expected = rms_norm(x, weight, 1e-6), torch_ops.rms_norm(x, weight, 1e-6)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected.float(), rtol=1.6e-2, atol=1.6e-2)
    assert (got != expected).float().mean() < 0.01  # most elements bit-equal: the same roundings


def test_processor_makes_the_pixels_on_the_gpu_as_on_the_cpu():
    """The video processor with device="cuda" (prism_mm's pipeline and video_e2e's rows) gives the CPU's tensors, the
    pixels made on the GPU (Qwen2.5-VL's real video processor, 8K visual tokens of random frames)."""
    pytest.importorskip("torchvision")
    from benchmarks.video_e2e import process, synthetic_frames
    from prism_mm.models import shipped_config
    from prism_mm.testing.tiny import build_tiny_processor

    processor = build_tiny_processor("qwen2_5_vl", real_vocab=True)
    frames = synthetic_frames(shipped_config("Qwen/Qwen2.5-VL-7B-Instruct").vision_config, 8192)
    cpu, _ = process(processor, frames)
    gpu, _ = process(processor, frames, device=torch.device("cuda"))
    assert gpu["pixel_values_videos"].is_cuda and gpu.keys() == cpu.keys()
    for key, value in cpu.items():
        got = gpu[key].cpu()
        assert torch.allclose(got.float(), value.float(), rtol=1e-6, atol=1e-6) if key == "pixel_values_videos" \
            else torch.equal(got, value), key


def test_frames_resized_on_the_gpu_as_on_the_cpu():
    """resize_frames on the GPU (the pipeline's path when the model is on one): 720p uint8 frames to 420x784 with
    qwen-vl-utils' filter, in chunks, back on the CPU as uint8; every value within one level of the CPU resize and
    at least 99% of them equal (the float rounding of the two devices differs only at rounding boundaries)."""
    pytest.importorskip("torchvision")
    from prism_mm.pipelines.video import RESIZE_CHUNK, resize_frames

    frames = torch.randint(0, 256, (RESIZE_CHUNK + 3, 3, 720, 1280), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    gpu, cpu = resize_frames(frames, (420, 784), "cuda"), resize_frames(frames, (420, 784))
    assert gpu.device.type == "cpu" and gpu.dtype == torch.uint8
    assert gpu.shape == cpu.shape == (RESIZE_CHUNK + 3, 3, 420, 784)
    diff = (gpu.int() - cpu.int()).abs()
    assert int(diff.max()) <= 1 and float((diff == 0).float().mean()) >= 0.99


def test_reused_prefix_equals_fresh_at_real_size_bf16(tmp_path):
    """Qwen2.5-VL-7B (random weights, bf16) on a 60 s 720p clip: an answer from the kept prefix and from a freshly
    built one (the pipelined default, Prism) give first-token logits within bf16 tolerance and the same tokens; the
    second answer is marked reused."""
    pytest.importorskip("decord")
    from prism_mm.pipelines.prefix import text_after_video
    from prism_mm.pipelines.session import VideoSession
    from prism_mm.pipelines.video import VideoOptions, video_messages
    from prism_mm.testing.clips import make_long_clip

    clip = str(make_long_clip(tmp_path / "clip60.mp4", 60))
    session = VideoSession("Qwen/Qwen2.5-VL-7B-Instruct", random_weights=True, device="cuda")
    opts, question = VideoOptions(), "What happens in this video? Answer in one sentence."
    ids = text_after_video(session.processor, video_messages(clip, question))
    results = []
    for clear in (False, False, True):
        if clear:
            session.prefixes.clear()
        prefix, built = session.prefix(clip, opts)
        results.append(session.answer(prefix, built, ids, 4))
    (first, a), (second, b), (fresh, c) = results
    assert not first.reused and second.reused and not fresh.reused and first.visual_tokens > 16384
    for other in (b, c):
        err = (other.first_logits.float() - a.first_logits.float()).norm() / a.first_logits.float().norm()
        assert err < 2e-2 and torch.equal(other.tokens, a.tokens)
