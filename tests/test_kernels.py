"""Each Triton kernel against its plain-PyTorch twin on fresh random inputs (interpreter on CPU)."""
import itertools
import math

import pytest
import torch
from conftest import DEVICE, rel_err
from generators import block_structured as _block_structured
from generators import random_selection

from prism_mm.kernels import block_select, block_sparse, pool, torch_ops
from prism_mm.kernels import blocks
from prism_mm.kernels.blocks import BandIndex, BlockSelection, SelectSpec

ON_GPU = DEVICE == "cuda"
FLOAT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# bf16 operands: error up to ~1e-2; fp16 ~1e-3; fp32 (tf32 dots on GPU) ~1e-3.
TOL = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def band_index(d):
    from prism_mm import PrismConfig, RopeSpec

    bands = RopeSpec(head_dim=d).bands(*PrismConfig().band_dims(d))
    return BandIndex.build(bands.high, bands.low, d, DEVICE)


def block_structured(b, h, n, d, bs, dtype=torch.float32, gain=1.0):
    return _block_structured(b, h, n, d, bs, dtype, gain, DEVICE)


@pytest.mark.parametrize("length,bs,d", [(77, 16, 64), (130, 32, 80), (64, 64, 128)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pool_bands_matches_reference(length, bs, d, dtype):
    bands = band_index(d)
    x = torch.randn(2, 3, length, d, device=DEVICE, dtype=dtype)
    got = pool.pool_bands(x, bs, bands)
    expected = torch_ops.pool_bands(x, bs, bands)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.isfinite(g).all()
        assert rel_err(g, e) < 1e-5


@pytest.mark.parametrize("q_len,kv_len,bs,d", [(77, 77, 16, 64), (40, 130, 32, 80), (64, 200, 64, 128)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pool_pair_matches_pooling_each_tensor(q_len, kv_len, bs, d, dtype):
    """pool_pair (Q and K in one launch: other heads, other lengths, Q in transformers' [B, L, H, D] memory) gives
    what the torch twin's pool_bands gives for each tensor separately, every element of all six outputs."""
    bands = band_index(d)
    q = torch.randn(2, q_len, 6, d, device=DEVICE, dtype=dtype).transpose(1, 2)
    k = torch.randn(2, 3, kv_len, d, device=DEVICE, dtype=dtype)
    got_q, got_k = pool.pool_pair(q, k, bs, bands)
    for got, x in ((got_q, q), (got_k, k)):
        for g, e in zip(got, torch_ops.pool_bands(x, bs, bands)):
            assert g.shape == e.shape and g.is_contiguous() and torch.isfinite(g).all()
            assert rel_err(g, e) < 1e-5
    with pytest.raises(ValueError, match="one head_dim"):
        pool.pool_pair(q, k[..., : d // 2], bs, bands)


def test_pool_pair_parts_are_aligned_disjoint_slices_of_one_buffer():
    """pool_pair's six outputs are parts of one fp32 buffer: each starts on a 128-byte boundary, no two overlap, and
    the (buffer, offset) a kernel is passed addresses exactly the memory of the part read as a tensor."""
    d, bs = 80, 16
    q = torch.randn(1, 45, 5, d, device=DEVICE).transpose(1, 2)  # 3 blocks: part sizes not multiples of 32
    k = torch.randn(1, 1, 61, d, device=DEVICE)
    pq, pk = pool.pool_pair(q, k, bs, band_index(d))
    assert pq.buffer is pk.buffer and pq.buffer.dtype == torch.float32
    spans = []
    for pooled in (pq, pk):
        for (buf, offset), part in zip(pooled.pointers(), pooled):
            assert (4 * offset) % 128 == 0  # bytes from the buffer's start: 128-byte aligned as an allocation
            assert part.data_ptr() == buf.data_ptr() + 4 * offset and part.is_contiguous()
            spans.append((offset, offset + part.numel()))
    spans.sort()
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans)), f"parts overlap: {spans}"
    assert pq.shape == (1, 5, 3, *(t.shape[-1] for t in (pq.high, pq.low))) and pk.energy.shape == (1, 1, 4, 3)


def test_select_reads_carved_parts_as_it_reads_separate_tensors():
    """The selection kernel given the pooling kernel's buffer and offsets selects exactly what it selects from the
    same values as three separate tensors each (and from one of each)."""
    b, hq, hkv, n, bs, d = 1, 4, 2, 150, 16, 64
    q, k = block_structured(b, hq, n, d, bs, gain=2.0), block_structured(b, hkv, n, d, bs)
    carved_q, carved_k = pool.pool_pair(q, k, bs, band_index(d))
    separate_q, separate_k = (blocks.Pooled(*(t.clone() for t in p)) for p in (carved_q, carved_k))
    spec = SelectSpec(d, bs, 0.9, 0.7, precise=True)
    got = [block_select.select_blocks(pq, pk, spec, n, n).to_mask()
           for pq, pk in ((carved_q, carved_k), (separate_q, separate_k), (carved_q, separate_k))]
    assert 0 < got[0].sum() < blocks.causal_block_mask(n, n, bs, DEVICE).sum() * b * hq  # a real selection
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_select_refuses_pooled_tensors_it_cannot_read():
    """select_blocks names the part that is not a contiguous fp32 tensor, and refuses q and k with other band dims."""
    b, h, n, bs, d = 1, 2, 64, 16, 64
    pq = torch_ops.pool_bands(torch.randn(b, h, n, d, device=DEVICE), bs, band_index(d))
    spec = SelectSpec(d, bs, 0.9, 0.9)
    strided = blocks.Pooled(pq.high, pq.low.transpose(-1, -2).contiguous().transpose(-1, -2), pq.energy)
    with pytest.raises(ValueError, match="q.low must be a contiguous float32"):
        block_select.select_blocks(strided, pq, spec, n, n)
    narrower = blocks.Pooled(pq.high[..., :8].contiguous(), pq.low, pq.energy)
    with pytest.raises(ValueError, match="band dims"):
        block_select.select_blocks(pq, narrower, spec, n, n)
    flat = blocks.Pooled(pq.high[0], pq.low[0], pq.energy[0])  # 3-D parts
    with pytest.raises(ValueError, match="q.high must be a contiguous float32"):
        block_select.select_blocks(flat, pq, spec, n, n)


@pytest.mark.parametrize(
    "b,hq,hkv,q_len,kv_len,bs,d",
    [
        (1, 2, 2, 150, 150, 16, 64),  # partial last block
        (2, 4, 1, 96, 224, 32, 64),  # GQA 4, chunked prefill (q_len < kv_len), aligned offset
        (1, 7, 1, 61, 200, 16, 80),  # GQA 7, offset not a multiple of the block, head_dim 80 bands
        (1, 2, 2, 1100, 1100, 16, 128),  # 69 key blocks: two ladder steps (64, 128) when forced
        (1, 2, 1, 600, 2200, 16, 64),  # chunk late in a prefill, forced ladder: width 64 empty, steps 128 and 256
    ],
)
@pytest.mark.parametrize("threshold", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("calibrate", [True, False])
def test_select_matches_reference(b, hq, hkv, q_len, kv_len, bs, d, threshold, calibrate):
    bands = band_index(d)
    q = block_structured(b, hq, q_len, d, bs, gain=2.0)
    k = block_structured(b, hkv, kv_len, d, bs)
    pooled_q, pooled_k = torch_ops.pool_bands(q, bs, bands), torch_ops.pool_bands(k, bs, bands)
    spec = SelectSpec(d, bs, threshold, 0.8 * threshold, calibrate=calibrate, precise=True)
    ladder_from = 2 if q_len > 500 else block_select.LADDER_MIN_KBLOCKS  # the long cases run the causal ladder
    sel = block_select._select(pooled_q, pooled_k, spec, q_len, kv_len, ladder_from)
    ref_sel = torch_ops.select_blocks(pooled_q, pooled_k, spec, q_len, kv_len)
    cnt, idx = sel.kv_num_blocks, sel.kv_indices
    nkb = blocks.num_blocks(kv_len, bs)
    assert (sel.q_len, sel.kv_len, sel.block_size) == (q_len, kv_len, bs)
    # Every listed entry is a causal block, strictly ascending, and counts are in range.
    valid = blocks.causal_block_mask(q_len, kv_len, bs, DEVICE)
    assert (cnt >= 1).all() and (cnt <= nkb).all()
    got = sel.to_mask()
    assert (got.sum(-1) == cnt).all(), "index list has duplicates or out-of-range entries"
    listed = torch.arange(nkb, device=DEVICE) < cnt[..., None]
    assert (idx[..., 1:].long() > idx[..., :-1].long())[listed[..., 1:]].all(), "index list not ascending"
    assert not (got & ~valid).any(), "a non-causal block was selected"
    expected = ref_sel.to_mask()
    assert 0 < expected.sum() < valid.sum() * b * hq or threshold == 1.0  # a real selection
    # Float summation order may flip a block sitting exactly on the top-p boundary; allow 0.5%.
    mismatches = (got != expected).sum().item()
    assert mismatches <= 0.005 * valid.sum().item() * b * hq, f"{mismatches} blocks differ from the reference"
    if threshold == 1.0:
        assert torch.equal(got, valid.expand_as(got))


CUTOFF_CASES = [
    (1, 2, 2, 150, 150, 16, 64),  # partial last block
    (2, 4, 1, 96, 224, 32, 64),  # GQA 4, chunked prefill
    (1, 7, 1, 61, 200, 16, 80),  # GQA 7, misaligned offset, head_dim 80
    (1, 2, 2, 1100, 1100, 16, 128),  # forced causal ladder
]


@pytest.mark.parametrize("b,hq,hkv,q_len,kv_len,bs,d", CUTOFF_CASES)
@pytest.mark.parametrize("cutoff", [0.02, 0.1])
def test_cutoff_select_matches_reference(b, hq, hkv, q_len, kv_len, bs, d, cutoff):
    """The cutoff rule (one cutoff on the mean band probability) of the Triton kernel against its torch twin:
    same blocks up to float ties, causal, ascending lists, sink and diagonal kept."""
    bands = band_index(d)
    q = block_structured(b, hq, q_len, d, bs, gain=2.0)
    k = block_structured(b, hkv, kv_len, d, bs)
    pq, pk = torch_ops.pool_bands(q, bs, bands), torch_ops.pool_bands(k, bs, bands)
    spec = SelectSpec(d, bs, 0.9, 0.9, precise=True, cutoff=cutoff)
    ladder_from = 2 if q_len > 1000 else block_select.LADDER_MIN_KBLOCKS
    sel = block_select._select(pq, pk, spec, q_len, kv_len, ladder_from)
    got, expected = sel.to_mask(), torch_ops.select_blocks(pq, pk, spec, q_len, kv_len).to_mask()
    valid = blocks.causal_block_mask(q_len, kv_len, bs, DEVICE)
    nkb = blocks.num_blocks(kv_len, bs)
    assert (got.sum(-1) == sel.kv_num_blocks).all(), "index list has duplicates or out-of-range entries"
    listed = torch.arange(nkb, device=DEVICE) < sel.kv_num_blocks[..., None]
    assert (sel.kv_indices[..., 1:].long() > sel.kv_indices[..., :-1].long())[listed[..., 1:]].all()
    assert not (got & ~valid).any(), "a non-causal block was selected"
    first, last = blocks.query_block_key_bounds(q_len, kv_len, bs, DEVICE)
    rows = torch.arange(first.numel(), device=DEVICE)
    assert got[..., 0].all() and got[..., rows, first].all() and got[..., rows, last].all()
    assert expected.sum() < valid.sum() * b * hq  # a real selection, not every block
    mismatches = (got != expected).sum().item()
    assert mismatches <= 0.005 * valid.sum().item() * b * hq, f"{mismatches} blocks differ from the reference"


@pytest.mark.parametrize("b,hq,hkv,q_len,kv_len,bs,d", CUTOFF_CASES[:3])
@pytest.mark.parametrize("cutoff,dense_tail", [(None, 40), (0.05, 1), (None, 10_000)])
def test_dense_tail_rows_keep_every_causal_block(b, hq, hkv, q_len, kv_len, bs, d, cutoff, dense_tail):
    """SelectSpec.dense_tail, Triton kernel and torch twin: the rows holding the last dense_tail query positions keep
    every causal block; every other row is the selection without it (same blocks in both ops)."""
    bands = band_index(d)
    q = block_structured(b, hq, q_len, d, bs, gain=2.0)
    k = block_structured(b, hkv, kv_len, d, bs)
    pq, pk = torch_ops.pool_bands(q, bs, bands), torch_ops.pool_bands(k, bs, bands)
    plain = SelectSpec(d, bs, 0.7, 0.7, precise=True, cutoff=cutoff)
    tail = SelectSpec(d, bs, 0.7, 0.7, precise=True, cutoff=cutoff, dense_tail=dense_tail)
    valid = blocks.causal_block_mask(q_len, kv_len, bs, DEVICE).expand(b, hq, -1, -1)
    first_dense = max(0, q_len - dense_tail) // bs  # row of query position q_len - dense_tail
    assert first_dense == blocks.dense_tail_row(q_len, bs, dense_tail)
    masks = {}
    for name, select in (("triton", lambda s: block_select._select(pq, pk, s, q_len, kv_len, block_select.LADDER_MIN_KBLOCKS)),
                         ("torch", lambda s: torch_ops.select_blocks(pq, pk, s, q_len, kv_len))):
        got, without = select(tail).to_mask(), select(plain).to_mask()
        assert torch.equal(got[..., first_dense:, :], valid[..., first_dense:, :]), name
        assert torch.equal(got[..., :first_dense, :], without[..., :first_dense, :]), name
        if dense_tail < q_len:  # without the tail those rows were really sparse
            assert not torch.equal(without[..., first_dense:, :], valid[..., first_dense:, :]), name
        masks[name] = got
    mismatches = (masks["triton"] != masks["torch"]).sum().item()
    assert mismatches <= 0.005 * valid.sum().item(), f"{mismatches} blocks differ between the kernel and the twin"


def test_cutoff_rule_keeps_exactly_the_blocks_above_the_cutoff():
    """The torch twin's cutoff rule, against the rule written out: kept = (mean of the two calibrated band
    softmaxes >= cutoff) | sink | diagonal; a higher cutoff keeps a subset; per-band top-p is a different rule."""
    import math

    bs, n, d, cutoff = 16, 300, 64, 0.03
    bands = band_index(d)
    q, k = block_structured(1, 4, n, d, bs, gain=2.0), block_structured(1, 2, n, d, bs)
    pq, pk = torch_ops.pool_bands(q, bs, bands), torch_ops.pool_bands(k, bs, bands)
    got = torch_ops.select_blocks(pq, pk, SelectSpec(d, bs, 0.9, 0.9, cutoff=cutoff), n, n).to_mask()
    valid = blocks.causal_block_mask(n, n, bs, DEVICE)
    mean = 0
    for qb, kb, band in ((pq.high, pk.high, 1), (pq.low, pk.low, 2)):
        t = torch_ops.band_temperature(pq.energy, pk.energy, band, qb.shape[-1], d, 2)
        logits = qb @ kb.repeat_interleave(2, 1).transpose(-1, -2) / (math.sqrt(qb.shape[-1]) * t[..., None, None])
        mean = mean + 0.5 * torch.softmax(logits.masked_fill(~valid, float("-inf")), -1)
    forced = torch.zeros_like(got)
    forced[..., 0] = True
    forced[..., torch.arange(valid.shape[0]), torch.arange(valid.shape[0])] = True
    assert torch.equal(got, ((mean >= cutoff) | forced) & valid)
    higher = torch_ops.select_blocks(pq, pk, SelectSpec(d, bs, 0.9, 0.9, cutoff=0.1), n, n).to_mask()
    assert not (higher & ~got).any() and higher.sum() < got.sum()
    top_p = torch_ops.select_blocks(pq, pk, SelectSpec(d, bs, 0.9, 0.9), n, n).to_mask()
    assert not torch.equal(top_p, got)


def test_ladder_covers_every_row_once():
    cases = [(1100, 1100, 16), (61, 200, 16), (128 * 1000, 128 * 1000, 128), (500, 9000, 64), (600, 2200, 16),
             (32768, 1_000_000, 128)]
    for (q_len, kv_len, bs), min_kblocks in itertools.product(cases, (0, block_select.LADDER_MIN_KBLOCKS)):
        nqb, nkb = blocks.num_blocks(q_len, bs), blocks.num_blocks(kv_len, bs)
        steps = block_select.ladder(nqb, nkb, q_len, kv_len, bs, min_kblocks=min_kblocks)
        rows = [r for start, end, _ in steps for r in range(start, end)]
        assert rows == list(range(nqb))
        # the selection kernel runs every step in one launch and relies on the widths doubling from the first
        assert [w for _, _, w in steps] == [steps[0][2] << s for s in range(len(steps))]
        _, last = blocks.query_block_key_bounds(q_len, kv_len, bs)
        for start, end, width in steps:
            assert int(last[start:end].max()) < width  # every causal key block fits in the row width


def _run_sparse(b, hq, hkv, q_len, kv_len, d, bs, dtype, density, memory="bhld", tiles=None):
    """q/k/v in [B, H, L, D] memory ("bhld") or transformers' [B, L, H, D] viewed as [B, H, L, D] ("blhd")."""
    def rand(h, n):
        if memory == "bhld":
            return torch.randn(b, h, n, d, device=DEVICE, dtype=dtype)
        return torch.randn(b, n, h, d, device=DEVICE, dtype=dtype).transpose(1, 2)

    q, k, v = rand(hq, q_len), rand(hkv, kv_len), rand(hkv, kv_len)
    sel = random_selection(b, hq, q_len, kv_len, bs, density, DEVICE)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    block_sparse.launch(q, k, v, sel, out=out, tiles=tiles)
    assert torch.isfinite(out).all(), "some output elements were not written"
    expected = torch_ops.block_sparse_attention(q.float(), k.float(), v.float(), sel)
    return out, expected, (q, k, v)


@pytest.mark.parametrize(
    "b,hq,hkv,q_len,kv_len,d,bs",
    [
        (1, 2, 2, 97, 97, 64, 16),  # odd length, MHA
        (2, 4, 1, 130, 130, 80, 32),  # GQA 4, head_dim 80, batch 2
        (1, 7, 1, 71, 200, 128, 16),  # GQA 7, chunked prefill with a misaligned causal offset
        (1, 2, 1, 200, 200, 64, 128),  # selection block 128 -> 2 key tiles per block
    ],
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_all_blocks_equals_dense_sdpa(b, hq, hkv, q_len, kv_len, d, bs, dtype):
    out, expected, (q, k, v) = _run_sparse(b, hq, hkv, q_len, kv_len, d, bs, dtype, density=1.0)
    from prism_mm.attention import dense_attention

    dense = dense_attention(q.float(), k.float(), v.float())
    assert rel_err(expected, dense) < 1e-5  # the reference itself is right
    assert rel_err(out, dense) < TOL[dtype]


@pytest.mark.parametrize(
    "b,hq,hkv,q_len,kv_len,d,bs,density",
    [
        (1, 4, 4, 257, 257, 64, 32, 0.3),
        (1, 7, 1, 150, 150, 128, 16, 0.4),
        (2, 4, 2, 100, 300, 80, 32, 0.5),
    ],
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_random_mask_matches_reference(b, hq, hkv, q_len, kv_len, d, bs, density, dtype):
    out, expected, _ = _run_sparse(b, hq, hkv, q_len, kv_len, d, bs, dtype, density)
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.parametrize("memory", ["bhld", "blhd"])
@pytest.mark.parametrize(
    "b,hq,hkv,q_len,kv_len,d,bs,density",
    [
        (2, 4, 2, 100, 300, 32, 32, 0.5),  # batch 2, GQA, misaligned causal offset: rows past kv_len are other keys
        (1, 2, 1, 200, 200, 64, 128, 1.0),  # two key tiles per block, partial last block
    ],
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_host_row_descriptors_match_reference(memory, b, hq, hkv, q_len, kv_len, d, bs, density, dtype):
    """The Hopper default (DESC 2: 2-D descriptors built on the host over the rows of K/V) in both memory
    layouts it accepts; keys read past kv_len belong to the next head or batch and must be masked out."""
    tiles = {**block_sparse.default_tiles(bs, d), "DESC": 2}
    out, expected, _ = _run_sparse(b, hq, hkv, q_len, kv_len, d, bs, dtype, density, memory, tiles)
    assert rel_err(out, expected) < TOL[dtype]


def test_rows_descriptor_memory_layouts():
    """Where each (batch, head) starts in the 2-D row view, for the two accepted memory layouts; None
    otherwise, and an explicit DESC 2 request with such a memory layout is refused."""
    b, h, n, d = 2, 3, 40, 16
    bhld = torch.randn(b, h, n, d, device=DEVICE)
    blhd = torch.randn(b, n, h, d, device=DEVICE).transpose(1, 2)
    assert block_sparse.rows_descriptor(bhld, 16)[1:] == (h * n, n, 0)
    assert block_sparse.rows_descriptor(blhd, 16)[1:] == (n, 0, d)
    assert block_sparse.rows_descriptor(torch.randn(b, h, 2 * n, d, device=DEVICE)[:, :, ::2], 16)[1:] == (h * n, n, 0)
    strided = torch.randn(b, h + 1, n, d, device=DEVICE)[:, :h]  # batches further apart than H * L rows
    assert block_sparse.rows_descriptor(strided, 16) is None
    sel = random_selection(b, h, n, n, 16, 0.5, DEVICE)
    with pytest.raises(ValueError, match="DESC 2 needs"):
        block_sparse.launch(bhld, strided, strided, sel, tiles={"DESC": 2})


def test_sparse_empty_rows_are_zero():
    """A query block with an empty list yields zeros (never NaN); the other rows are unaffected."""
    bs, n = 16, 64
    q, k, v = (torch.randn(1, 1, n, 64, device=DEVICE) for _ in range(3))
    mask = blocks.causal_block_mask(n, n, bs, DEVICE)[None, None].clone()
    mask[..., 2, :] = False
    sel = BlockSelection.from_mask(mask, bs, n, n)
    assert sel.kv_num_blocks[0, 0, 2] == 0
    out = block_sparse.block_sparse_attention(q, k, v, sel)
    expected = torch_ops.block_sparse_attention(q, k, v, sel)
    assert torch.isfinite(out).all()
    assert (out[..., 2 * bs:3 * bs, :] == 0).all()
    assert rel_err(out, expected) < TOL[torch.float32]


def test_output_into_transposed_buffer():
    """The launcher writes into any strided `out`, e.g. the [B, L, H, D] memory layout transformers wants."""
    b, h, n, d, bs = 1, 3, 80, 64, 16
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for _ in range(3))
    sel = random_selection(b, h, n, n, bs, 0.5, DEVICE)
    buf = torch.full((b, n, h, d), float("nan"), device=DEVICE)
    block_sparse.block_sparse_attention(q, k, v, sel, out=buf.transpose(1, 2))
    assert torch.isfinite(buf).all()
    assert rel_err(buf.transpose(1, 2), torch_ops.block_sparse_attention(q, k, v, sel)) < TOL[torch.float32]


def test_unaligned_inputs_match_the_twin():
    """Q, K, V and out that start 4 bytes past a 16-byte boundary (Triton compiles them as another kind) give the
    torch twin's output, every element written."""
    b, h, n, d, bs = 1, 2, 80, 64, 16

    def unaligned(*shape):
        return torch.randn(math.prod(shape) + 1, device=DEVICE)[1:].view(shape)

    q, k, v = (unaligned(b, h, n, d) for _ in range(3))
    out = unaligned(b, h, n, d).fill_(float("nan"))
    assert all(t.data_ptr() % 16 for t in (q, k, v, out))
    sel = random_selection(b, h, n, n, bs, 0.5, DEVICE)
    block_sparse.block_sparse_attention(q, k, v, sel, out=out)
    assert torch.isfinite(out).all()
    assert rel_err(out, torch_ops.block_sparse_attention(q, k, v, sel)) < TOL[torch.float32]


def test_sparse_launch_refuses_kv_it_cannot_read():
    """V of another shape than K, or K / V of another batch or head_dim than Q, are refused before any launch (a
    cached launch plan is keyed on Q's and K's shapes)."""
    b, h, n, d, bs = 1, 2, 64, 64, 16
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for _ in range(3))
    sel = random_selection(b, h, n, n, bs, 0.5, DEVICE)
    for bad_k, bad_v in ((k, torch.randn(2, h, n, d, device=DEVICE)), (k[..., :32], v[..., :32]),
                         (torch.randn(2, h, n, d, device=DEVICE),) * 2):
        with pytest.raises(ValueError, match="k and v"):
            block_sparse.block_sparse_attention(q, bad_k, bad_v, sel)


def test_launch_plans_are_kept_apart_by_memory_layout():
    """The sparse launch's cached plan (grid, strides, tiles) is per kind of input: the same shapes with another
    memory layout of out, q or v get their own plan, and every call matches the torch twin with every element
    written."""
    b, h, n, d, bs = 1, 3, 80, 64, 16
    q, k, v = (torch.randn(b, h, n, d, device=DEVICE) for _ in range(3))
    sel = random_selection(b, h, n, n, bs, 0.5, DEVICE)
    expected = torch_ops.block_sparse_attention(q, k, v, sel)
    block_sparse._plans.clear()
    blhd = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731 - transformers' memory layout
    for q_in, v_in, transposed_out in ((q, v, False), (q, v, True), (blhd(q), v, True), (q, blhd(v), False),
                                       (q, v.clone(), False)):
        buf = torch.full((b, n, h, d) if transposed_out else (b, h, n, d), float("nan"), device=DEVICE)
        out = buf.transpose(1, 2) if transposed_out else buf
        block_sparse.block_sparse_attention(q_in, k, v_in, sel, out=out)
        assert torch.isfinite(buf).all() and rel_err(out, expected) < TOL[torch.float32]
    assert len(block_sparse._plans) == 4  # the last call has the first call's memory layouts: its plan is reused


def test_fast_select_is_a_superset_close_to_exact():
    """precise=False (the GPU default: TF32 scoring, 16-step top-p search) keeps at least the exact
    selection's mass and differs from it only at the top-p boundary."""
    bs, n, d = 16, 700, 64
    bands = band_index(d)
    q, k = block_structured(1, 4, n, d, bs, gain=2.0), block_structured(1, 2, n, d, bs)
    pq, pk = torch_ops.pool_bands(q, bs, bands), torch_ops.pool_bands(k, bs, bands)
    fast = block_select.select_blocks(pq, pk, SelectSpec(d, bs, 0.9, 0.9, precise=False), n, n).to_mask()
    exact = block_select.select_blocks(pq, pk, SelectSpec(d, bs, 0.9, 0.9, precise=True), n, n).to_mask()
    assert (fast != exact).float().mean() < 0.005
    assert fast.sum() >= exact.sum() - 0.005 * exact.numel()


def test_each_op_has_one_signature_across_backends():
    """The Triton launchers and their torch twins take the same parameters, so callers never branch on backend."""
    import inspect

    from prism_mm.kernels import OP_NAMES, ops

    triton_ops, torch_set = ops("triton", "cuda"), ops("torch", "cpu")
    assert (triton_ops.name, torch_set.name) == ("triton", "torch")
    for name in OP_NAMES:
        a, b = getattr(triton_ops, name), getattr(torch_set, name)
        assert a is not b, name
        assert list(inspect.signature(a).parameters) == list(inspect.signature(b).parameters), name


def test_torch_attention_twin_chunks_queries_without_changing_the_result(monkeypatch):
    """The CPU path processes query chunks (bounded memory); forcing many small chunks gives the same output
    as one chunk, and both match an independent masked-softmax computation."""
    b, hq, hkv, q_len, kv_len, d, bs = 2, 4, 2, 150, 230, 64, 16
    q = torch.randn(b, hq, q_len, d)
    k, v = torch.randn(b, hkv, kv_len, d), torch.randn(b, hkv, kv_len, d)
    sel = random_selection(b, hq, q_len, kv_len, bs, 0.4)
    one_chunk = torch_ops.block_sparse_attention(q, k, v, sel)
    monkeypatch.setattr(torch_ops, "ATTENTION_CHUNK_ELEMENTS", 1)  # one query block per chunk
    many_chunks = torch_ops.block_sparse_attention(q, k, v, sel)
    assert rel_err(many_chunks, one_chunk) < 1e-6  # only the matmul's key range differs
    # Independent: expand the block mask to tokens, intersect with causality, softmax over all keys at once.
    tokens = sel.to_mask().repeat_interleave(bs, -2)[..., :q_len, :].repeat_interleave(bs, -1)[..., :kv_len]
    qpos = torch.arange(q_len)[:, None] + kv_len - q_len
    tokens = tokens & (torch.arange(kv_len)[None, :] <= qpos)
    scores = q @ k.repeat_interleave(hq // hkv, 1).transpose(-1, -2) / d ** 0.5
    expected = scores.masked_fill(~tokens, float("-inf")).softmax(-1) @ v.repeat_interleave(hq // hkv, 1)
    assert rel_err(many_chunks, expected) < 1e-5


def test_selection_that_does_not_fit_the_inputs_is_refused():
    q = torch.randn(1, 2, 64, 64, device=DEVICE)
    sel = random_selection(1, 2, 64, 64, 16, 0.5, DEVICE)
    for attention in (torch_ops.block_sparse_attention, block_sparse.block_sparse_attention):
        with pytest.raises(ValueError, match="q_len=64, kv_len=64"):
            attention(q[:, :, :48], q[:, :, :48], q[:, :, :48], sel)
        with pytest.raises(ValueError, match="do not match"):  # one query head, a selection for two
            attention(q[:, :1], q[:, :1], q[:, :1], sel)


def test_causal_block_count_is_the_causal_mask_sum():
    """blocks.causal_block_count (closed form, on every attention call's path) counts the causal block mask's pairs,
    for whole and partial blocks, chunks late in a prefill (offsets not a multiple of the block, or a multiple), one
    query, q_len == kv_len and every small combination of lengths and block sizes."""
    cases = [(200, 200, 32), (61, 200, 16), (1, 999, 64), (128, 128, 128), (300, 5000, 128), (256, 384, 128),
             (1, 1, 16), (33536, 33536, 128)]
    cases += [(q, kv, bs) for bs in (1, 3, 16, 32) for kv in range(1, 70, 3) for q in range(1, kv + 1, 2)]
    for q_len, kv_len, bs in cases:
        expected = int(blocks.causal_block_mask(q_len, kv_len, bs).sum())
        assert blocks.causal_block_count(q_len, kv_len, bs) == expected, (q_len, kv_len, bs)


@pytest.mark.parametrize("rows,cols", [(37, 80), (5, 1000), (130, 128), (3, 1280)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("weight_fp32", [False, True])
def test_rms_norm_matches_transformers_formula(rows, cols, dtype, weight_fp32):
    """The fused RMSNorm kernel against transformers' formula (the torch twin) on every element, for odd row counts,
    widths that are not powers of two, several rows per program (128) and one (1280), a weight in the input's
    dtype or in fp32 (output promoted), and a strided [L, B, N] view."""
    from prism_mm.kernels import rms_norm

    g = torch.Generator().manual_seed(rows * cols)
    x = (3 * torch.randn(2, rows, cols, generator=g) + 0.5).to(DEVICE, dtype).transpose(0, 1)  # [rows, 2, cols]
    weight = (1 + 0.1 * torch.randn(cols, generator=g)).to(DEVICE, torch.float32 if weight_fp32 else dtype)
    got = rms_norm.rms_norm(x, weight, 1e-6)
    expected = torch_ops.rms_norm(x, weight, 1e-6)
    wide = (3 * torch.randn(rows, cols + 7, generator=g)).to(DEVICE, dtype)[:, :cols]  # rows 7 elements apart, no copy
    assert torch.equal(rms_norm.rms_norm(wide, weight, 1e-6), rms_norm.rms_norm(wide.contiguous(), weight, 1e-6))
    assert got.shape == expected.shape and got.dtype == expected.dtype == torch.promote_types(weight.dtype, dtype)
    # fp32 sums in another order: at most one rounding step of the input dtype (the normalised row's) apart, on every
    # element (an unwritten element would be far off)
    step = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert torch.allclose(got.float(), expected.float(), rtol=step, atol=step), (got.float() - expected.float()).abs().max()
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm.rms_norm(x, weight[:-1], 1e-6)
    with pytest.raises(ValueError, match="float16 / bfloat16 / float32"):
        rms_norm.rms_norm(x.double(), weight, 1e-6)
