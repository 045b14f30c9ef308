"""The block convention every op shares: tensors, blocks, causality, and the types that cross the ops.

- Tensors are [batch, heads, tokens, head_dim]; K/V may have fewer heads than Q (GQA: query head h
  reads KV head h // (Hq // Hkv)).
- Queries are the last q_len positions of the kv_len keys: query i sits at absolute position
  kv_len - q_len + i. Key block j covers keys [j*bs, (j+1)*bs); query block i covers queries
  [i*bs, (i+1)*bs). A query attends to keys at positions <= its own.
- A block selection (BlockSelection) is a compact list per (batch, query head, query block), as
  FlexAttention's BlockMask: kv_num_blocks [B, Hq, NQB] int32 and kv_indices [B, Hq, NQB, NKB] int32
  whose first kv_num_blocks entries are the selected key blocks in ascending order (the rest is
  unspecified). Ascending order carries FlexAttention's full/partial split implicitly: only a row's
  last two entries can reach its own positions (the "partial" blocks that need the causal mask,
  see query_block_key_bounds), every earlier entry is a full block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def num_blocks(n: int, block_size: int) -> int:
    return (n + block_size - 1) // block_size


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1). Host code uses this and num_blocks rather than triton.next_power_of_2
    / triton.cdiv, which are constexpr functions costing microseconds per call."""
    return 1 << (n - 1).bit_length()


def query_block_key_bounds(q_len: int, kv_len: int, block_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: (first, last) key block holding its own positions ("diagonal" blocks).

    `last` is also the last key block the query block may see causally.
    """
    offset = kv_len - q_len
    i = torch.arange(num_blocks(q_len, block_size), device=device)
    first_pos = offset + i * block_size
    last_pos = torch.clamp(offset + (i + 1) * block_size, max=kv_len) - 1
    return first_pos // block_size, last_pos // block_size


def causal_block_mask(q_len: int, kv_len: int, block_size: int, device=None) -> torch.Tensor:
    """[NQB, NKB] bool: key blocks a query block can see at all."""
    _, last = query_block_key_bounds(q_len, kv_len, block_size, device)
    j = torch.arange(num_blocks(kv_len, block_size), device=device)
    return j[None, :] <= last[:, None]


def block_density(kv_num_blocks: torch.Tensor, causal_blocks: int) -> torch.Tensor:
    """[B, Hq] fraction of the causal blocks kept, from the per-row counts [B, Hq, NQB] (stays on the device)."""
    return kv_num_blocks.sum(dim=-1).float() / causal_blocks


def causal_block_count(q_len: int, kv_len: int, block_size: int) -> int:
    """Number of (query block, key block) pairs a dense causal pass computes (the sum of causal_block_mask), in closed
    form: no tensor work and no loop over the blocks on an attention call's path (the cached loop it replaces cost
    ~180 us at 128K on this machine's CPU for every new length, e.g. each chunk of a chunked prefill).

    Query block i < q_len // block_size ends at key position offset + (i + 1) * block_size - 1 (offset = kv_len -
    q_len), so it sees (offset - 1) // block_size + i + 2 key blocks; a ragged last query block sees every key block.
    """
    full = q_len // block_size
    count = full * ((kv_len - q_len - 1) // block_size + 1) + full * (full + 1) // 2
    if num_blocks(q_len, block_size) > full:
        count += num_blocks(kv_len, block_size)
    return count


def indices_from_block_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, NQB, NKB] bool -> (kv_num_blocks int32, kv_indices int32 ascending, padded with -1)."""
    nkb = mask.shape[-1]
    counts = mask.sum(dim=-1, dtype=torch.int32)
    j = torch.arange(nkb, device=mask.device, dtype=torch.int32).expand(mask.shape)
    # Selected indices first (stable sort keeps ascending order), unselected ones after.
    keys = torch.where(mask, j, j + nkb)
    indices = torch.sort(keys, dim=-1, stable=True).values
    indices = torch.where(indices < nkb, indices, torch.full_like(indices, -1))
    return counts, indices.to(torch.int32)


def block_mask_from_indices(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """Inverse of indices_from_block_mask: [B, H, NQB, NKB] bool."""
    pos = torch.arange(kv_indices.shape[-1], device=kv_indices.device)
    used = pos < kv_num_blocks[..., None].long()
    # Unused entries scatter into a spare column that is dropped afterwards.
    idx = torch.where(used, kv_indices.long(), torch.full_like(kv_indices, num_key_blocks, dtype=torch.long))
    mask = torch.zeros(*kv_indices.shape[:-1], num_key_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    mask.scatter_(-1, idx, True)
    return mask[..., :num_key_blocks]


@dataclass
class BlockSelection:
    """Selected key blocks per (batch, query head, query block), FlexAttention-style compact lists.

    Passed whole to the attention ops; see the module docstring for the convention.
    """

    kv_num_blocks: torch.Tensor  # [B, Hq, NQB] int32
    kv_indices: torch.Tensor  # [B, Hq, NQB, NKB] int32; first kv_num_blocks entries valid, ascending
    block_size: int
    q_len: int
    kv_len: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block_size: int, q_len: int, kv_len: int) -> "BlockSelection":
        """From a [B, H, NQB, NKB] bool block mask (entries outside causality must be False)."""
        counts, indices = indices_from_block_mask(mask)
        return cls(counts, indices, block_size, q_len, kv_len)

    @property
    def num_key_blocks(self) -> int:
        return self.kv_indices.shape[-1]

    @property
    def num_query_blocks(self) -> int:
        return self.kv_num_blocks.shape[-1]

    def causal_blocks(self) -> int:
        """Number of (query block, key block) pairs a dense causal pass computes."""
        return causal_block_count(self.q_len, self.kv_len, self.block_size)

    def density(self) -> torch.Tensor:
        """[B, Hq] fraction of the causal blocks that were selected (stays on the device)."""
        return block_density(self.kv_num_blocks, self.causal_blocks())

    def to_mask(self) -> torch.Tensor:
        """[B, Hq, NQB, NKB] bool block mask (for inspection and plots)."""
        return block_mask_from_indices(self.kv_num_blocks, self.kv_indices, self.num_key_blocks)

    def check(self, batch: int, q_heads: int, q_len: int, kv_len: int) -> None:
        """Raise ValueError unless this selection fits queries [batch, q_heads, q_len] over kv_len keys."""
        nqb, nkb = num_blocks(q_len, self.block_size), num_blocks(kv_len, self.block_size)
        if (self.q_len, self.kv_len) != (q_len, kv_len):
            raise ValueError(f"selection was made for q_len={self.q_len}, kv_len={self.kv_len}; "
                             f"the inputs have q_len={q_len}, kv_len={kv_len}")
        if tuple(self.kv_num_blocks.shape) != (batch, q_heads, nqb) or tuple(self.kv_indices.shape) != (batch, q_heads, nqb, nkb):
            raise ValueError(f"selection shapes {tuple(self.kv_num_blocks.shape)} / {tuple(self.kv_indices.shape)} do not "
                             f"match (batch, query heads, query blocks, key blocks) = {(batch, q_heads, nqb, nkb)}")
        if self.kv_num_blocks.dtype != torch.int32 or self.kv_indices.dtype != torch.int32:
            raise ValueError("kv_num_blocks and kv_indices must be int32")


class Pooled:
    """Block-pooled band vectors of Q or K (fp32): high [B,H,NB,DH], low [B,H,NB,DL], and per-block energies
    [B,H,NB,3] = sum(pooled^2) over all dims, over the high band and over the low band.

    Either three tensors (`Pooled(high, low, energy)`, the torch twin's), or three contiguous parts of one fp32
    buffer at element offsets (`Pooled.carved`, the Triton pooling's): the selection kernel takes the buffer and the
    offsets, and the parts become tensors only when read, so the host makes no views on the attention path.
    """

    __slots__ = ("buffer", "offsets", "shape", "_parts")

    def __init__(self, high: torch.Tensor, low: torch.Tensor, energy: torch.Tensor):
        self.buffer, self.offsets, self._parts = None, None, (high, low, energy)
        self.shape = (*high.shape[:3], high.shape[-1], low.shape[-1])  # checked by the ops that take it

    @classmethod
    def carved(cls, buffer: torch.Tensor, offsets: tuple[int, int, int], shape: tuple[int, ...]) -> "Pooled":
        """The parts of `buffer` (1-D fp32) at element `offsets` (high, low, energy); shape (B, H, NB, DH, DL)."""
        self = cls.__new__(cls)
        self.buffer, self.offsets, self.shape, self._parts = buffer, offsets, shape, None
        return self

    def _views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._parts is None:
            b, h, nb, dh, dl = self.shape
            shapes = ((b, h, nb, dh), (b, h, nb, dl), (b, h, nb, 3))
            self._parts = tuple(self.buffer[o:o + math.prod(s)].view(s) for o, s in zip(self.offsets, shapes))
        return self._parts

    @property
    def high(self) -> torch.Tensor:
        return self._views()[0]

    @property
    def low(self) -> torch.Tensor:
        return self._views()[1]

    @property
    def energy(self) -> torch.Tensor:
        return self._views()[2]

    @property
    def device(self) -> torch.device:
        return (self.buffer if self.buffer is not None else self._parts[0]).device

    def __iter__(self):
        return iter(self._views())

    def pointers(self) -> tuple[tuple[torch.Tensor, int], ...]:
        """(tensor, element offset) of high, low and energy: what a kernel is passed, without making views."""
        if self.buffer is not None:
            return tuple((self.buffer, o) for o in self.offsets)
        return tuple((t, 0) for t in self._parts)


@dataclass(frozen=True)
class BandIndex:
    """The two RoPE bands as device tensors, in both encodings the ops use (built once per layer and device).

    high_idx / low_idx: the band's head dims, ascending (int64); high_pos / low_pos: for each head dim, its
    position inside the band or -1 (int32 [D]).
    """

    high_idx: torch.Tensor
    low_idx: torch.Tensor
    high_pos: torch.Tensor
    low_pos: torch.Tensor

    @classmethod
    def build(cls, high: tuple[int, ...], low: tuple[int, ...], head_dim: int, device) -> "BandIndex":
        if not high or not low or max(high + low) >= head_dim or min(high + low) < 0:
            raise ValueError(f"band dims must be non-empty and within head_dim {head_dim}, got high={high}, low={low}")
        hi = torch.tensor(high, dtype=torch.long, device=device)
        lo = torch.tensor(low, dtype=torch.long, device=device)

        def positions(idx):
            pos = torch.full((head_dim,), -1, dtype=torch.int32, device=device)
            pos[idx] = torch.arange(idx.numel(), dtype=torch.int32, device=device)
            return pos

        return cls(hi, lo, positions(hi), positions(lo))

    @property
    def head_dim(self) -> int:
        return self.high_pos.numel()


@dataclass(frozen=True)
class SelectSpec:
    """The scalar parameters of dual-band block selection (everything select_blocks needs besides the pooled bands).

    Band logits are q_band . k_band / (sqrt(d_band) * t_band), t_band the RMS-energy temperature when
    `calibrate` (1 otherwise); causal softmax per row and band. Then one of two rules, plus the sink and
    diagonal blocks:
    - cutoff None: top-p per band (threshold_high / threshold_low), union of the two sets;
    - cutoff c in (0, 1): keep a block when the mean of its two band probabilities is >= c. One cutoff for every
      head and row, so the block budget follows where the estimated mass is (thresholds unused).
    `dense_tail` > 0: the query-block rows that hold any of the last `dense_tail` query positions of this call (a
    prompt or a prefill chunk) keep every causal block (the prompt's end, where the question sits, sees all of it;
    see dense_tail_row).
    `precise` concerns the Triton op only (IEEE fp32 dots and the exact top-p search instead of TF32 and a
    16-step search); the torch op is always exact.
    """

    head_dim: int
    block_size: int
    threshold_high: float
    threshold_low: float
    calibrate: bool = True
    force_sink: bool = True
    force_diagonal: bool = True
    precise: bool = False
    cutoff: float | None = None
    dense_tail: int = 0


def dense_tail_row(q_len: int, block_size: int, dense_tail: int) -> int:
    """The first query-block row that holds one of the last `dense_tail` query positions (the row count when
    dense_tail is 0): rows from it on keep every causal block."""
    if dense_tail <= 0:
        return num_blocks(q_len, block_size)
    return max(0, q_len - dense_tail) // block_size
