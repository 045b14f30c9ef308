"""PrismConfig validation and a RopeSpec -> band dims, checked against frequencies computed by hand."""
from types import SimpleNamespace

import pytest
import torch

from prism_mm import PrismConfig, RopeSpec, rope_spec_from_config


def test_config_defaults_and_presets():
    cfg = PrismConfig()
    # the default by evidence (docs/accuracy.md, benchmarks/results/default-decision.md)
    assert (cfg.block_size, cfg.threshold_high, cfg.threshold_low, cfg.dense_tail) == (128, 0.99, 0.99, 128)
    assert cfg.calibrate and cfg.force_sink and cfg.force_diagonal
    assert cfg.band_dims(128) == (64, 96)
    assert cfg.band_dims(64) == (32, 48)
    assert cfg.band_dims(80) == (40, 60)
    assert PrismConfig.video(block_size=64) == PrismConfig(block_size=64), "no video measurement says otherwise"
    paper, paper_video = PrismConfig.paper(), PrismConfig.paper(video=True, block_size=64)
    assert (paper.threshold_high, paper.threshold_low, paper.dense_tail) == (0.95, 0.95, 0)
    assert (paper_video.threshold_high, paper_video.threshold_low, paper_video.block_size) == (0.93, 0.93, 64)
    assert PrismConfig().with_threshold(0.5).threshold_low == 0.5
    with pytest.raises(Exception):
        cfg.block_size = 64  # frozen


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"threshold_high": 0.0}, "threshold_high"),
        ({"threshold_low": 1.01}, "threshold_low"),
        ({"threshold_low": -0.5}, "threshold_low"),
        ({"block_size": 100}, "block_size"),
        ({"high_band_dims": 7}, "high_band_dims"),
        ({"min_sparse_len": -1}, "min_sparse_len"),
        ({"method": "magic"}, "method"),
        ({"cutoff": 0.0}, "cutoff"),
        ({"cutoff": 1.0}, "cutoff"),
        ({"dense_tail": -1}, "dense_tail"),
        ({"dense_tail": 1.5}, "dense_tail"),
    ],
)
def test_config_rejects_out_of_range(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PrismConfig(**kwargs)


def test_band_wider_than_head_dim_is_rejected():
    with pytest.raises(ValueError, match="exceeds head_dim"):
        PrismConfig(low_band_dims=96).band_dims(64)


def _hand_frequencies(d, theta, rotary=None):
    r = rotary or d
    return [theta ** (-2 * i / r) if i < r // 2 else 0.0 for i in range(d // 2)]


def _hand_bands(d, theta, n_high, n_low, rotary=None):
    freq = _hand_frequencies(d, theta, rotary)
    order = sorted(range(d // 2), key=lambda i: (-freq[i], i))
    dims = lambda pairs: tuple(sorted(list(pairs) + [p + d // 2 for p in pairs]))  # noqa: E731
    return dims(order[: n_high // 2]), dims(order[d // 2 - n_low // 2:])


@pytest.mark.parametrize("d,theta", [(128, 10000.0), (128, 1e6), (64, 5e5), (80, 10000.0)])
def test_plain_rope_bands_follow_frequencies(d, theta):
    rope = RopeSpec(head_dim=d, theta=theta)
    expected = torch.tensor(_hand_frequencies(d, theta), dtype=torch.float64)
    assert torch.allclose(rope.pair_frequencies(), expected, rtol=1e-12)
    hi, lo = PrismConfig().band_dims(d)
    bands = rope.bands(hi, lo)
    assert (bands.high, bands.low) == _hand_bands(d, theta, hi, lo)
    if d == 128:  # the paper's bands: pairs 0..31 high, pairs 16..63 low
        assert bands.high == tuple(range(0, 32)) + tuple(range(64, 96))
        assert bands.low == tuple(range(16, 64)) + tuple(range(80, 128))
    assert set(rope.pair_axes()) == {"1d"}


def test_partial_rotary_dims_are_lowest_frequency():
    rope = RopeSpec(head_dim=64, theta=10000.0, rotary_dims=32)
    freq = rope.pair_frequencies()
    assert (freq[16:] == 0).all() and (freq[:16] > 0).all()
    bands = rope.bands(16, 16)
    assert bands.low == tuple(range(24, 32)) + tuple(range(56, 64))  # un-rotated pairs 24..31
    assert rope.pair_axes()[16:] == ("-",) * 16


def test_qwen2_vl_sectioned_mrope():
    rope = RopeSpec(head_dim=128, theta=1e6, mrope_section=(16, 24, 24))
    axes = rope.pair_axes()
    assert axes[:16] == ("t",) * 16 and axes[16:40] == ("h",) * 24 and axes[40:] == ("w",) * 24
    # Sectioning keeps each pair's frequency: bands are the plain-RoPE ones.
    assert rope.bands(64, 96) == RopeSpec(head_dim=128, theta=1e6).bands(64, 96)


def test_qwen3_vl_interleaved_mrope():
    rope = RopeSpec(head_dim=128, theta=5e6, mrope_section=(24, 20, 20), interleaved=True)
    axes = rope.pair_axes()
    for i, axis in enumerate(axes):
        if i % 3 == 1 and i < 60:
            assert axis == "h", i
        elif i % 3 == 2 and i < 60:
            assert axis == "w", i
        else:
            assert axis == "t", i
    assert axes.count("t") == 24 and axes.count("h") == 20 and axes.count("w") == 20
    hi, lo = rope.bands(64, 96).high, rope.bands(64, 96).low
    assert (hi, lo) == _hand_bands(128, 5e6, 64, 96)


def test_mrope_section_must_cover_pairs():
    with pytest.raises(ValueError, match="mrope_section"):
        RopeSpec(head_dim=128, mrope_section=(16, 24, 20))


def test_rope_spec_from_transformers_style_configs():
    # Qwen2.5-VL (transformers 4.x: rope_scaling holds the mrope_section)
    q25 = SimpleNamespace(text_config=None, hidden_size=3584, num_attention_heads=28, rope_theta=1e6,
                          rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
    rope = rope_spec_from_config(q25)
    assert rope == RopeSpec(head_dim=128, theta=1e6, mrope_section=(16, 24, 24))
    # Qwen3-VL (transformers 5.x: rope_parameters, nested text_config, explicit head_dim)
    text = SimpleNamespace(head_dim=128, num_attention_heads=32, hidden_size=4096,
                           rope_parameters={"rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True})
    rope = rope_spec_from_config(SimpleNamespace(text_config=text))
    assert rope.interleaved and rope.mrope_section == (24, 20, 20) and rope.theta == 5e6
    # A plain text model
    llama = SimpleNamespace(hidden_size=576, num_attention_heads=9, rope_theta=100000.0)
    assert rope_spec_from_config(llama) == RopeSpec(head_dim=64, theta=1e5)
    with pytest.raises(ValueError, match="rope_theta"):
        rope_spec_from_config(SimpleNamespace(hidden_size=64, num_attention_heads=1))
