"""The kernels at real sizes (8K-32K tokens, bf16/fp16, Qwen-VL head layouts) on a CUDA GPU.

Skipped without CUDA. References are computed on a sample of query blocks (a full fp32 reference
at 32K would not fit), every output element is checked for having been written.
"""
import pytest
import torch
from conftest import rel_err

from prism_mm import PrismConfig, RopeLayout, prism_attention
from prism_mm.attention import dense_attention
from prism_mm.kernels import reference as ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


def sampled_reference(q, k, v, cnt, idx, bs, rows):
    """Reference output for the query blocks `rows` only: [B, Hq, len(rows)*bs (clipped), D]."""
    b, hq, q_len, d = q.shape
    kv_len = k.shape[2]
    group = hq // k.shape[1]
    blocks = ref.block_mask_from_indices(cnt, idx, ref.num_blocks(kv_len, bs))
    outs = []
    for r in rows:
        t0, t1 = r * bs, min((r + 1) * bs, q_len)
        qs = q[:, :, t0:t1].float()
        allowed = blocks[:, :, r].repeat_interleave(bs, dim=-1)[..., :kv_len]  # [B, H, kv_len]
        qpos = torch.arange(t0, t1, device=q.device)[:, None] + kv_len - q_len
        causal = torch.arange(kv_len, device=q.device)[None, :] <= qpos
        mask = allowed[:, :, None, :] & causal
        out = torch.empty(b, hq, t1 - t0, d, device=q.device)
        for h in range(hq):  # one head at a time keeps memory small
            s = qs[:, h] @ k[:, h // group].float().transpose(-1, -2) / d**0.5
            p = torch.softmax(s.masked_fill(~mask[:, h], float("-inf")), -1)
            out[:, h] = p @ v[:, h // group].float()
        outs.append(out)
    return torch.cat(outs, dim=2)


def sampled_rows(nqb):
    return sorted({0, 1, nqb // 3, nqb // 2, nqb - 2, nqb - 1})


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
    cnt, idx = ref.random_selection(1, hq, q_len, kv_len, bs, density, "cuda")
    out = torch.full_like(q, float("nan"))
    block_sparse_attention(q, k, v, cnt, idx, bs, out=out)
    assert torch.isfinite(out).all(), "unwritten output elements"
    sample = sampled_rows(cnt.shape[-1])
    expected = sampled_reference(q, k, v, cnt, idx, bs, sample)
    got = torch.cat([out[:, :, r * bs:min((r + 1) * bs, q_len)] for r in sample], dim=2)
    assert rel_err(got, expected) < TOL[dtype]
    if density == 1.0 and q_len <= 8192:
        assert rel_err(out, dense_attention(q.float(), k.float(), v.float())) < TOL[dtype]


@pytest.mark.parametrize("hq,hkv,n", [(28, 4, 32768), (32, 8, 16384 + 77)])
def test_estimation_kernels_real_sizes(hq, hkv, n):
    from prism_mm.kernels import estimate, pool

    bs, d = 128, 128
    bands = RopeLayout(head_dim=d, theta=1e6).bands(64, 96)
    hi, lo = bands.tensors("cuda")
    pos = lambda idx: torch.full((d,), -1, dtype=torch.int32, device="cuda").index_put_(  # noqa: E731
        (idx,), torch.arange(idx.numel(), dtype=torch.int32, device="cuda"))
    nb = (n + bs - 1) // bs
    # Block-structured tokens so that the selection is sparse, not flat.
    q = (torch.randn(1, hq, nb, 1, d, device="cuda").expand(-1, -1, -1, bs, -1).reshape(1, hq, nb * bs, d)[:, :, :n]
         * 2 + 0.5 * torch.randn(1, hq, n, d, device="cuda")).bfloat16()
    k = (torch.randn(1, hkv, nb, 1, d, device="cuda").expand(-1, -1, -1, bs, -1).reshape(1, hkv, nb * bs, d)[:, :, :n]
         + 0.5 * torch.randn(1, hkv, n, d, device="cuda")).bfloat16()
    got_q = pool.pool_bands(q, bs, pos(hi), pos(lo), 64, 96)
    exp_q = ref.pool_bands(q, bs, hi, lo)
    for g, e in zip(got_q, exp_q):
        assert rel_err(g, e) < 1e-5
    (qh, ql, qe), (kh, kl, ke) = exp_q, ref.pool_bands(k, bs, hi, lo)
    args = (qh, kh, ql, kl, qe, ke, d, 0.93, 0.93, n, n, bs)
    cnt, idx = estimate.select_blocks(*args)  # TF32 scoring, the default on GPU
    ref_cnt, ref_idx = ref.select_blocks(*args)
    got = ref.block_mask_from_indices(cnt, idx, nb)
    assert (got.sum(-1) == cnt).all()
    expected = ref.block_mask_from_indices(ref_cnt, ref_idx, nb)
    valid = ref.causal_block_mask(n, n, bs, "cuda")
    assert not (got & ~valid).any()
    assert expected.sum() < 0.8 * valid.sum() * hq  # a real (sparse) selection
    assert (got != expected).sum().item() <= 2e-3 * valid.sum().item() * hq


def test_prism_attention_end_to_end_bf16():
    hq, hkv, n, d = 28, 4, 16384, 128
    layout = RopeLayout(head_dim=d, theta=1e6, mrope_section=(16, 24, 24))
    q = torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    cfg = PrismConfig.video(min_sparse_len=0, max_density=1.0)
    out, stats = prism_attention(q, k, v, cfg, rope=layout, return_stats=True)
    assert torch.isfinite(out).all() and stats.sparse
    sel = stats.selection
    sample = sampled_rows(n // 128)
    expected = sampled_reference(q, k, v, sel.kv_num_blocks, sel.kv_indices, 128, sample)
    got = torch.cat([out[:, :, r * 128:(r + 1) * 128] for r in sample], dim=2)
    assert rel_err(got, expected) < TOL[torch.bfloat16]
    # The torch path on the same GPU tensors selects (nearly) the same blocks.
    from prism_mm import estimate

    sel_t = estimate(q, k, cfg, layout.bands(*cfg.band_dims(d)), backend="torch")
    assert (sel_t.to_mask() != sel.to_mask()).float().mean() < 2e-3
