"""Block estimation on constructed inputs where the right answer is known."""
import math
from dataclasses import replace

import pytest
import torch
from conftest import DEVICE

from prism_mm import PrismConfig, RopeSpec, SpectralBands, estimate
from prism_mm.kernels.blocks import causal_block_mask

BACKENDS = ["torch", "triton"]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    """rotate_half RoPE, as Llama/Qwen apply it. x [..., L, D], positions [L]."""
    d = rope.head_dim
    ang = positions[:, None].double() * rope.pair_frequencies()[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos.to(x.device) + torch.cat([-x2, x1], -1) * sin.to(x.device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_block_built_to_match_is_selected(backend):
    """Keys of one block align with every query: with a low threshold that block (plus sink and
    diagonal) is all that is kept."""
    bs, nb, d = 16, 8, 64
    n = bs * nb
    direction = torch.randn(d)
    direction /= direction.norm()
    q = torch.randn(1, 2, n, d) * 0.1 + 6 * direction
    k = torch.randn(1, 2, n, d) * 0.1
    target = 3
    k[:, :, target * bs:(target + 1) * bs] += 6 * direction
    cfg = PrismConfig(block_size=bs, threshold_high=0.5, threshold_low=0.5, min_sparse_len=0, dense_tail=0)
    sel = estimate(q.to(DEVICE), k.to(DEVICE), cfg, RopeSpec(head_dim=d).bands(32, 48), backend)
    mask = sel.to_mask().cpu()
    for i in range(nb):
        for h in range(2):
            picked = set(torch.nonzero(mask[0, h, i]).flatten().tolist())
            assert {0, i} <= picked, (i, h)  # sink and diagonal always
            if i >= target:  # the matching block is visible: it takes (nearly) all the mass
                assert picked == {0, target, i}, (i, h, picked)


def slash_inputs(bs=32, nb=16, d=64, shift_blocks=3):
    """Queries attend to keys exactly `shift_blocks` blocks back: a RoPE "slash" (diagonal) pattern
    carried by the fastest-rotating pairs, plus block-constant semantic noise in the slowest pairs.

    Mean pooling averages the fast rotation away, so the slash is invisible to plain pooled scores
    while the token-level attention puts most of its mass there.
    """
    rope = RopeSpec(head_dim=d, theta=10000.0)
    n = bs * nb
    u = torch.zeros(d)
    u[0:6] = 4.0  # pairs 0..5: 1 to 0.2 rad per token, > 6 rad per block
    u[d // 2:d // 2 + 6] = 4.0
    pos = torch.arange(n)
    q = apply_rope(u.expand(n, d), pos, rope)
    k = apply_rope(u.expand(n, d), pos + shift_blocks * bs, rope)
    slow = list(range(d // 2 - 8, d // 2)) + list(range(d - 8, d))  # pairs 24..31: nearly static
    q[:, slow] += 2.5 * torch.randn(16)
    k[:, slow] += 2.5 * torch.randn(nb, 16).repeat_interleave(bs, 0)
    q = q + 0.3 * torch.randn(n, d)
    k = k + 0.3 * torch.randn(n, d)
    return q[None, None].to(DEVICE), k[None, None].to(DEVICE), rope


def true_block_mass(q, k, bs):
    n, d = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-1, -2))[0, 0].float().cpu() / math.sqrt(d)
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    p = s.softmax(-1)
    nb = n // bs
    return p.view(n, nb, bs).sum(-1).view(nb, bs, nb).mean(1)


def slash_case(heads=4, bs=32, nb=16, shift=3, backend="torch"):
    """`heads` independent slash draws as the heads of one input: true block mass, Prism's and plain mean
    pooling's selections [heads, nb, nb]. Several draws, so that the claims below are about the method and
    not about one lucky or unlucky draw."""
    draws = [slash_inputs(bs, nb, shift_blocks=shift) for _ in range(heads)]
    q, k = (torch.cat([dr[i] for dr in draws], dim=1) for i in (0, 1))
    rope = draws[0][2]
    mass = torch.stack([true_block_mass(q[:, h:h + 1], k[:, h:h + 1], bs) for h in range(heads)])
    cfg = PrismConfig(block_size=bs, threshold_high=0.9, threshold_low=0.9, min_sparse_len=0, dense_tail=0)
    prism = estimate(q, k, cfg, rope.bands(*cfg.band_dims(64)), backend).to_mask()[0].cpu()
    # method="meanpool": one band over all dims, no calibration (the baseline Prism sets out to fix).
    plain = estimate(q, k, replace(cfg, method="meanpool"), rope.bands(*cfg.band_dims(64)), backend)
    return mass, prism[:, :nb, :nb], plain.to_mask()[0].cpu()[:, :nb, :nb]


@pytest.mark.parametrize("backend", BACKENDS)
def test_high_band_catches_rope_slash_that_mean_pooling_misses(backend):
    bs, nb, shift = 32, 16, 3
    mass, prism, plain = slash_case(4, bs, nb, shift, backend)
    rows = torch.arange(shift + 1, nb)
    assert mass[:, rows, rows - shift].mean() > 0.4  # the slash carries a large share of the true attention

    prism_hits = prism[:, rows, rows - shift].sum(-1)  # per head
    plain_hits = plain[:, rows, rows - shift].sum().item()
    assert (prism_hits >= len(rows) - 1).all(), f"Prism found the slash block in {prism_hits.tolist()} of {len(rows)} rows"
    assert plain_hits <= 0.75 * prism_hits.numel() * len(rows), f"plain mean pooling found it in {plain_hits} rows"
    # And it pays off in captured attention mass at a comparable density.
    recall = lambda m: (mass * m).sum(-1).mean().item()  # noqa: E731
    assert recall(prism) > recall(plain) + 0.1
    valid = causal_block_mask(nb * bs, nb * bs, bs)
    assert prism.sum() <= 1.6 * plain.sum() and prism.sum() < 0.75 * valid.sum() * prism.shape[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_meanpool_method_is_plain_mean_pooling(backend):
    """method="meanpool" is top-p over mean-pooled Q . K of all dims without calibration, whatever bands it is given."""
    bs, n, d = 16, 200, 64
    q, k = torch.randn(1, 4, n, d, device=DEVICE), torch.randn(1, 2, n, d, device=DEVICE)
    cfg = PrismConfig(block_size=bs, threshold_high=0.8, threshold_low=0.3, min_sparse_len=0, dense_tail=0)
    got = estimate(q, k, replace(cfg, method="meanpool"), RopeSpec(head_dim=d).bands(32, 48), backend).to_mask()
    all_dims = SpectralBands(high=tuple(range(d)), low=tuple(range(d)))
    plain = PrismConfig(block_size=bs, threshold_high=0.8, threshold_low=0.8, calibrate=False, min_sparse_len=0, dense_tail=0)
    expected = estimate(q, k, plain, all_dims, backend).to_mask()
    assert (got != expected).float().mean() < 0.005
    assert not torch.equal(got, estimate(q, k, cfg, RopeSpec(head_dim=d).bands(32, 48), backend).to_mask())


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutoff_method_finds_the_rope_slash_with_fewer_blocks_where_mass_is_concentrated(backend):
    """method="cutoff" scores with Prism's two bands, so it finds the slash block as prism does; with one cutoff
    for all rows it keeps no more blocks than prism's per-row top-p here, where the slash holds the mass."""
    bs, nb, shift = 32, 16, 3
    draws = [slash_inputs(bs, nb, shift_blocks=shift) for _ in range(4)]
    q, k = (torch.cat([dr[i] for dr in draws], dim=1) for i in (0, 1))
    cfg = PrismConfig(block_size=bs, threshold_high=0.9, threshold_low=0.9, min_sparse_len=0, dense_tail=0)
    bands = draws[0][2].bands(*cfg.band_dims(64))
    prism = estimate(q, k, cfg, bands, backend).to_mask()[0].cpu()[:, :nb, :nb]
    cut = estimate(q, k, replace(cfg, method="cutoff", cutoff=0.05), bands, backend).to_mask()[0].cpu()[:, :nb, :nb]
    rows = torch.arange(shift + 1, nb)
    assert (cut[:, rows, rows - shift].sum(-1) >= len(rows) - 1).all()
    assert cut.sum() <= prism.sum()
