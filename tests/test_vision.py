"""The vision-tower attention (one batched call per segment length) against transformers' per-segment SDPA path."""
import pytest
import torch
from conftest import DEVICE, rel_err

from prism_mm.vision import plan_segments, varlen_attention


def block_diagonal_reference(q, k, v, cu_seqlens):
    """Dense attention under a block-diagonal mask, in float32: [1, T, H, D]."""
    seg = torch.bucketize(torch.arange(q.shape[2], device=q.device), cu_seqlens[1:], right=True)
    mask = seg[:, None] == seg[None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("lengths", [[64] * 5 + [16, 64, 32, 16, 64], [7], [100, 100, 100], [3, 64, 1, 64, 50, 3]])
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16, torch.float16] if DEVICE == "cuda" else []))
def test_varlen_attention_is_block_diagonal_attention(lengths, dtype):
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    h, d, total = 3, 80, sum(lengths)
    # transformers' layout: [T, H, D] tokens viewed as [1, H, T, D]
    q, k, v = (torch.randn(total, h, d, device=DEVICE, dtype=dtype).transpose(0, 1)[None] for _ in range(3))
    out = varlen_attention(q, k, v, cu)
    assert out.shape == (1, total, h, d) and torch.isfinite(out).all()
    assert rel_err(out, block_diagonal_reference(q, k, v, cu)) < (1e-5 if dtype == torch.float32 else 2e-2)


def test_plan_groups_segments_by_length_and_views_runs_in_place():
    plan = plan_segments(torch.tensor([0, 64, 128, 144, 208, 224]))
    assert plan.total == 224
    by_length = {g.length: g for g in plan.groups}
    assert set(by_length) == {16, 64}
    assert by_length[64].count == 3 and by_length[64].index.tolist()[:2] == [0, 1]  # 0, 64 and 144: not back to back
    assert by_length[16].index.tolist() == list(range(128, 144)) + list(range(208, 224))
    run = plan_segments(torch.tensor([0, 10, 20, 30]))
    assert run.groups[0].index is None and (run.groups[0].start, run.groups[0].count) == (0, 3)


@pytest.mark.parametrize("bad,match", [(torch.tensor([[0, 4]]), "1-D"), (torch.tensor([1, 4]), "start at 0"),
                                       (torch.tensor([0, 5, 3]), "never decrease")])
def test_bad_cu_seqlens_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        plan_segments(bad)


def test_cu_seqlens_must_cover_the_tokens():
    q = torch.randn(1, 2, 10, 16)
    with pytest.raises(ValueError, match="ends at 8"):
        varlen_attention(q, q, q, torch.tensor([0, 4, 8]))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_vision_tower_with_varlen_equals_transformers_sdpa(model_type):
    """The whole vision tower of each Qwen-VL architecture (tiny, random weights; windows and full-attention layers
    for Qwen2.5-VL, deepstack features for Qwen3-VL) gives transformers' SDPA path's output, with one batched call
    per segment length instead of one per window."""
    from prism_mm import vision
    from prism_mm.models import set_attention, enable_prism
    from prism_mm.testing.tiny import build_tiny_model, video_inputs

    model = build_tiny_model(model_type).to(DEVICE)
    inputs = video_inputs(model.config, frames=6, grid=12)  # 3 temporal patches of 12 x 12: edge windows too
    pixels, thw = inputs["pixel_values_videos"].to(DEVICE), inputs["video_grid_thw"].to(DEVICE)
    tower = model.model.visual
    with torch.no_grad():
        ref = tower(pixels, grid_thw=thw)
        enable_prism(model)
        calls = []
        original = vision.varlen_attention
        vision.varlen_attention = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            out = tower(pixels, grid_thw=thw)
        finally:
            vision.varlen_attention = original
        set_attention(model, "dense", "sdpa")
        again = tower(pixels, grid_thw=thw)
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert len(calls) == len(tower.blocks)  # one varlen call per layer
    for name in ("last_hidden_state", "pooler_output"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < 1e-5
        assert torch.equal(getattr(again, name), getattr(ref, name))
    for a, b in zip(getattr(out, "deepstack_features", None) or [], getattr(ref, "deepstack_features", None) or []):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])  # Qwen2-VL: embed_dim x an int ratio, aligned
def test_mlp_width_alignment_keeps_the_tower_output(model_type):
    """Zero-padding an unaligned vision MLP width (100 -> 128 here; 3420 -> 3456 in Qwen2.5-VL-7B) changes nothing
    in the tower's output, and only MLPs whose width is not a multiple of 8 are touched; restore_mlp_widths gives back
    the same Linear modules at width 100 with the loaded weights."""
    from prism_mm.testing.tiny import build_tiny_model, tiny_config, video_inputs
    from prism_mm.vision import align_mlp_widths, restore_mlp_widths

    config = tiny_config(model_type)
    config.vision_config.intermediate_size = 100
    torch.manual_seed(0)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    inputs = video_inputs(model.config, frames=4, grid=8)
    tower = model.model.visual
    with torch.no_grad():
        ref = tower(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"]).pooler_output
        assert align_mlp_widths(tower) == len(tower.blocks)
        out = tower(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"]).pooler_output
    widths = {m.out_features for b in tower.blocks for m in b.mlp.modules() if isinstance(m, torch.nn.Linear)}
    assert 128 in widths and 100 not in widths
    assert rel_err(out, ref) < 1e-6
    assert align_mlp_widths(tower) == 0  # aligned now: nothing left to pad
    assert align_mlp_widths(build_tiny_model(model_type).model.visual) == 0  # width 128: already aligned
    linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
    assert restore_mlp_widths(tower) == len(tower.blocks) and restore_mlp_widths(tower) == 0
    assert [m for m in tower.modules() if isinstance(m, torch.nn.Linear)] == linears
    with torch.no_grad():
        again = tower(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"]).pooler_output
    assert torch.equal(again, ref)
