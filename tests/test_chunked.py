"""Chunked prefill (decoder chunks against a growing KV cache, frame-chunked vision tower) gives the unchunked
forward's last-position logits and greedy answer, with Prism at thresholds 1.0 and with dense SDPA."""
import pytest
import torch
from conftest import rel_err

from prism_mm import PrismConfig, enable_prism
from prism_mm.models import set_attention
from prism_mm.pipelines.prefill import ChunkConfig, chunked_prefill, greedy_decode
from prism_mm.testing.tiny import build_tiny_model, video_inputs

ALL_BLOCKS = PrismConfig(block_size=16, min_sparse_len=0).with_threshold(1.0)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("attn", ["prism", "dense"])
def test_chunked_prefill_equals_unchunked(model_type, attn):
    model = build_tiny_model(model_type)
    enable_prism(model, ALL_BLOCKS)
    set_attention(model, attn)
    inputs = video_inputs(model.config, frames=8, grid=8, text_before=50, text_after=23)  # 4 temporal patches
    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    n = inputs["input_ids"].shape[1]
    state = chunked_prefill(model, inputs, ChunkConfig(decoder_tokens=37, vision_frames=1))  # ragged chunks
    assert state.prompt_tokens == n and state.cache.get_seq_length() == n
    assert rel_err(state.logits, ref) < 1e-4
    if attn == "prism":  # one record per layer for the whole prompt, merged over the chunks, all of them sparse
        records = model.prism_stats.layers
        assert all((r.q_len, r.kv_len, r.sparse) == (n, n, True) for r in records.values()) and len(records) == 2
        assert all(r.kept_blocks() == r.total_blocks() for r in records.values())  # thresholds 1.0: every block
    tokens = greedy_decode(model, state, max_new_tokens=5, eos_token_id=-1)
    assert torch.equal(tokens, expected[:, :tokens.shape[1]]) and tokens.shape[1] == expected.shape[1]


def test_chunked_record_keeps_a_dense_first_chunk():
    """A first chunk shorter than min_sparse_len runs dense: the merged per-layer record says so, it is not sparse."""
    model = build_tiny_model("qwen2_5_vl")
    enable_prism(model, PrismConfig(block_size=16, min_sparse_len=60).with_threshold(1.0))
    inputs = video_inputs(model.config, frames=8, grid=8, text_before=50, text_after=23)
    chunked_prefill(model, inputs, ChunkConfig(decoder_tokens=37))
    summary = model.prism_stats.summary()
    assert summary["sparse_layers"] == 0 and summary["dense_reasons"] == ["shorter than min_sparse_len"]
    assert all(r.q_len == inputs["input_ids"].shape[1] for r in model.prism_stats.layers.values())


def test_chunk_config_is_checked():
    with pytest.raises(ValueError, match="decoder_tokens"):
        ChunkConfig(decoder_tokens=0)
    with pytest.raises(ValueError, match="vision_frames"):
        ChunkConfig(vision_frames=0)


def test_cli_chunked_prefill_gives_the_unchunked_answer(tmp_path, capsys):
    """video_qa with --chunk-tokens / --vision-chunk-frames answers as the one-pass run does (thresholds 1.0)."""
    pytest.importorskip("decord")
    import json

    from prism_mm.pipelines.video_qa import main
    from prism_mm.testing.clips import make_demo_video

    clip = str(make_demo_video(tmp_path / "clip.mp4", seconds=4, fps=8, height=112, width=168))
    base = ["--video", clip, "--question", "What moves?", "--model", "tiny-qwen2.5-vl", "--max-frames", "8",
            "--max-new-tokens", "4", "--block-size", "16", "--min-sparse-len", "0", "--threshold", "1.0", "--json",
            "--no-progress"]
    answers = []
    for extra in ([], ["--chunk-tokens", "40", "--vision-chunk-frames", "1"]):
        assert main(base + extra) == 0
        answers.append(json.loads(capsys.readouterr().out)["answer"])
    assert answers[0] == answers[1]
    assert main(base + ["--chunk-tokens", "0"]) == 2
    assert "--chunk-tokens must be an int >= 1" in capsys.readouterr().err
