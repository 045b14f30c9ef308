"""A video's prefix built once, questions answered from it (pipelines.prefix, pipelines.session): exactness against
fresh runs, MRoPE positions of the text after the video, keys that never serve a stale prefix, the store's budget."""
import os
import shutil

import pytest
import torch

pytest.importorskip("decord")
pytest.importorskip("qwen_vl_utils")

from prism_mm.config import PrismConfig  # noqa: E402
from prism_mm.pipelines.prefill import ChunkConfig, _positions  # noqa: E402
from prism_mm.pipelines.prefix import PrefixStore, text_after_video, text_positions  # noqa: E402
from prism_mm.pipelines.session import VideoSession  # noqa: E402
from prism_mm.pipelines.video import VideoOptions, build_inputs, video_messages  # noqa: E402
from prism_mm.testing.clips import make_demo_video  # noqa: E402
from prism_mm.testing.tiny import save_tiny  # noqa: E402

SPARSE = PrismConfig(block_size=16, min_sparse_len=0, threshold_high=0.7, threshold_low=0.7)
OPTS = VideoOptions(fps=2.0, max_frames=8)
QUESTIONS = ["What moves?", "Which colour is the square, and where does it go at the end of the clip?", "Why?"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(make_demo_video(tmp_path_factory.mktemp("video") / "demo.mp4", seconds=5, fps=8, height=112, width=168))


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def tiny(request, tmp_path_factory):
    return str(save_tiny(request.param, tmp_path_factory.mktemp(request.param)))


def session_of(tiny, config=SPARSE, **kw) -> VideoSession:
    return VideoSession(tiny, config, device="cpu", **kw)


def answer(session, path, question, opts=OPTS, tokens=4):
    """(tokens, first-token logits, record) of `question` from the session's prefix of `path` (built if not kept)."""
    prefix, built = session.prefix(path, opts)
    ids = text_after_video(session.processor, video_messages(path, question))
    record, result = session.answer(prefix, built, ids, tokens)
    return result.tokens, result.first_logits, record


def test_prompt_is_prefix_then_text_after_video(tiny, clip):
    """The processor's ids of the whole prompt are the prefix's ids followed by text_after_video's, and the MRoPE
    positions the question chunk gets are those get_rope_index gives the whole prompt."""
    session = session_of(tiny)
    question = QUESTIONS[1]
    full = build_inputs(session.processor, session.model.config, clip, question, OPTS)
    prefix = build_inputs(session.processor, session.model.config, clip, None, OPTS)
    after = text_after_video(session.processor, video_messages(clip, question))
    assert full.inputs["input_ids"][0].tolist() == prefix.inputs["input_ids"][0].tolist() + after
    assert torch.equal(full.inputs["video_grid_thw"], prefix.inputs["video_grid_thw"])
    expected = _positions(session.model, full.inputs)[..., -len(after):]
    _positions(session.model, prefix.inputs)  # stores the prefix's rope_deltas, as a prefix build does
    got = text_positions(prefix.total_tokens, len(after), session.model.model.rope_deltas, "cpu")
    assert torch.equal(got, expected[-3:])


def test_reused_prefix_equals_fresh_prefix_bit_for_bit(tiny, clip):
    """Several questions in a row and in another order from one kept prefix give the same first-token logits (bit for
    bit) and tokens as each question asked of a freshly built prefix; only the first answer builds the prefix."""
    session = session_of(tiny)
    kept = [answer(session, clip, q) for q in QUESTIONS + QUESTIONS[::-1]]
    assert [r.reused for *_, r in kept] == [False] + [True] * 5
    assert session.prefixes.misses == 1
    for question, (tokens, logits, _) in zip(QUESTIONS + QUESTIONS[::-1], kept):
        session.prefixes.clear()
        fresh_tokens, fresh_logits, record = answer(session, clip, question)
        assert not record.reused
        assert torch.equal(logits, fresh_logits) and torch.equal(tokens, fresh_tokens)


def test_prefix_at_threshold_one_equals_dense_one_pass(tiny, clip):
    """At thresholds 1.0 (every block kept) an answer from the prefix equals one dense forward over the whole prompt
    within float tolerance: same first-token logits and greedy tokens."""
    session = session_of(tiny, PrismConfig(block_size=16, min_sparse_len=0, threshold_high=1.0, threshold_low=1.0))
    question = QUESTIONS[1]
    tokens, logits, record = answer(session, clip, question, tokens=5)
    assert record.sparse_layers > 0  # Prism ran on the prefix, not a dense fallback
    full = build_inputs(session.processor, session.model.config, clip, question, OPTS)
    session.set_attention("dense")
    with torch.no_grad():
        out = session.model.generate(**full.inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
    torch.testing.assert_close(logits, out.logits[0], rtol=1e-4, atol=1e-4)
    assert tokens[0].tolist() == out.sequences[0, full.total_tokens:].tolist()


def test_chat_second_answer_equals_fresh_run_over_the_conversation(tiny, clip, monkeypatch):
    """A chat's second answer equals a fresh run over the whole conversation as the template writes it (a new prefix,
    then everything after the video as one dense chunk): same answer, first-token logits within float tolerance; the
    second turn prefilled only the tokens its cache did not hold."""
    from prism_mm.pipelines import prefix as prefix_module

    logits, real = [], prefix_module.extend
    monkeypatch.setattr(prefix_module, "extend", lambda *a, **k: logits.append(real(*a, **k)) or logits[-1])
    session = session_of(tiny)
    chat = session.load_video(clip, OPTS).chat()
    first = chat.ask(QUESTIONS[0], 1)  # one token: it is not fed back, so the template writes what the cache holds
    fed_after_first = list(chat._fed)
    second = chat.ask(QUESTIONS[1], 4)
    assert second.reused
    ids = text_after_video(session.processor, chat.messages[:-1])  # the conversation up to the second question
    assert ids[:len(fed_after_first)] == fed_after_first  # the second turn continued the first's cache
    assert second.question_tokens == len(ids) - len(fed_after_first)
    session.prefixes.clear()
    prefix, _ = session.prefix(clip, OPTS)
    record, _ = session.answer(prefix, False, ids, 4)
    assert record.answer == second.answer and first.new_tokens == 1
    torch.testing.assert_close(logits[1], logits[2], rtol=1e-5, atol=1e-5)


def test_changed_file_options_config_or_mode_never_hit(tiny, clip, tmp_path):
    """A file rewritten in place, other sampling options, another PrismConfig or dense mode build a new prefix; the
    rewritten file's answer equals a fresh session's answer for the new content."""
    session = session_of(tiny)
    path = str(tmp_path / "clip.mp4")
    shutil.copy(clip, path)
    answer(session, path, QUESTIONS[0])
    make_demo_video(path, seconds=4, fps=8, height=112, width=168)  # same path, new content
    tokens, logits, record = answer(session, path, QUESTIONS[0])
    assert not record.reused
    fresh_tokens, fresh_logits, _ = answer(session_of(tiny), path, QUESTIONS[0])
    assert torch.equal(logits, fresh_logits) and torch.equal(tokens, fresh_tokens)
    os.utime(path, ns=(1, 1))  # only the times change: still a new identity
    assert not answer(session, path, QUESTIONS[0])[2].reused
    assert not answer(session, path, QUESTIONS[0], VideoOptions(fps=2.0, max_frames=6))[2].reused
    session.set_attention("dense")
    assert not answer(session, path, QUESTIONS[0])[2].reused
    other = session_of(tiny, PrismConfig(block_size=16, min_sparse_len=0, threshold_high=0.6, threshold_low=0.6),
                       prefixes=session.prefixes)
    assert session.prefix_key(path, OPTS) != other.prefix_key(path, OPTS)


def test_small_budget_evicts_and_answers_stay_exact(tiny, clip, tmp_path):
    """Under a device budget of one prefix, a second video evicts the first (dropped, or offloaded to the CPU when
    cpu_bytes allows); asking the first again gives the same logits as before."""
    second = str(make_demo_video(tmp_path / "other.mp4", seconds=4, fps=8, height=112, width=168))
    for cpu_bytes in (0, 1 << 30):
        session = session_of(tiny, prefixes=PrefixStore(device_bytes=1, cpu_bytes=cpu_bytes))
        _, before, _ = answer(session, clip, QUESTIONS[0])
        answer(session, second, QUESTIONS[0])
        assert session.prefixes.evicted == 1 and len(session.prefixes) == (2 if cpu_bytes else 1)
        _, after, record = answer(session, clip, QUESTIONS[0])
        assert record.reused == bool(cpu_bytes)
        assert torch.equal(before, after)


def test_background_load_equals_foreground(tiny, clip):
    """load_video(background=True) builds the prefix in a thread; the first ask waits for it, carries its build time
    (reused False) and gives the foreground's answer."""
    session = session_of(tiny)
    fore = session.load_video(clip, OPTS).ask(QUESTIONS[0], 4)
    session.prefixes.clear()
    video = session.load_video(clip, OPTS, background=True)
    back = video.ask(QUESTIONS[0], 4)
    assert not back.reused and back.answer == fore.answer and video.ask(QUESTIONS[1], 2).reused


def test_pipelined_prefix_in_chunks_equals_one_pass_at_threshold_one(tiny, clip):
    """A prefix built in decoder chunks (the pipelined default's shape) answers as one built in one pass, at
    thresholds 1.0, within float tolerance."""
    full = PrismConfig(block_size=16, min_sparse_len=0, threshold_high=1.0, threshold_low=1.0)
    _, one, _ = answer(session_of(tiny, full, stream_chunks=None), clip, QUESTIONS[0])
    _, chunked, record = answer(session_of(tiny, full, stream_chunks=ChunkConfig(decoder_tokens=96)), clip,
                                QUESTIONS[0])
    assert record.decoder_chunks > 1
    torch.testing.assert_close(chunked, one, rtol=1e-4, atol=1e-4)


def fake_prefix(name: str, nbytes: int) -> "VideoPrefix":
    """A VideoPrefix of `nbytes` bytes of cache (one layer) keyed by `name`, for the store's accounting."""
    from prism_mm.pipelines.prefix import PrefixBuild, PrefixKey, VideoPrefix

    k = torch.zeros(nbytes // 8)  # keys and values: 4 bytes each per element
    return VideoPrefix(PrefixKey("m", ("dense",), (name,), ()), [(k, k.clone())], 1, torch.zeros(1, 1), 2, (1, 1), 1,
                       1.0, PrefixBuild(0.0, 0.0, None, False))


def test_store_offloads_restores_and_reports():
    """Under device_bytes of two prefixes and cpu_bytes of one, a third prefix offloads the oldest and a fourth drops
    the oldest offloaded one; get() and restore() bring an offloaded prefix back (evicting the least recently used);
    report() lists what is kept, offloaded or not."""
    store = PrefixStore(device_bytes=2000, cpu_bytes=1000)
    a, b, c, d = (fake_prefix(n, 1000) for n in "abcd")
    for p in (a, b, c):
        store.put(p)
    assert [(r["file"], r["offloaded"]) for r in store.report()] == [("a", True), ("b", False), ("c", False)]
    store.put(d)  # b offloaded; a, the oldest offloaded, dropped
    assert [(r["file"], r["offloaded"]) for r in store.report()] == [("b", True), ("c", False), ("d", False)]
    assert store.evicted == 2 and a.key not in store
    assert store.get(b.key, "cpu") is b  # back on the device: c, now the least recently used, offloaded
    assert [(r["file"], r["offloaded"]) for r in store.report()] == [("c", True), ("d", False), ("b", False)]
    store.restore(c, "cpu")  # an offloaded prefix handed out earlier: back, d offloaded
    assert [(r["file"], r["offloaded"]) for r in store.report()] == [("d", True), ("b", False), ("c", False)]
    assert all(r["bytes"] == 1000 for r in store.report())
