"""Each concept has one definition that every entry point reads: the attention modes, the Qwen-VL model types, and
PrismConfig's defaults (the CLI's and the lmms-eval model's Prism settings default to PrismConfig.video())."""
import dataclasses
import inspect

import pytest

from prism_mm import PrismConfig
from prism_mm.models import ATTENTIONS, VL_MODEL_TYPES, VL_PATCH_SIZES
from prism_mm.pipelines import qa, video_qa


def test_attention_modes_come_from_models():
    from prism_mm.app import page

    assert page.MODES is ATTENTIONS
    assert qa.MODES == ATTENTIONS + ("compare",)
    assert video_qa.parse_args(["--video", "v", "--attn", "compare"]).attn == "compare"


def test_model_types_are_one_list():
    from prism_mm.tiny_models import TINY_MODELS

    assert tuple(VL_PATCH_SIZES) == VL_MODEL_TYPES
    assert sorted(TINY_MODELS.values()) == sorted(VL_MODEL_TYPES)


def test_cli_prism_defaults_are_the_configs(monkeypatch):
    assert video_qa.prism_config(video_qa.parse_args(["--video", "v"])) == PrismConfig.video()
    # a changed default in config.py reaches the CLI: the flags not given leave PrismConfig.video()'s values
    changed = PrismConfig.video(block_size=64, threshold_high=0.9, dense_tail=0, min_sparse_len=1)
    monkeypatch.setattr(PrismConfig, "video", classmethod(lambda cls, **kw: dataclasses.replace(changed, **kw)))
    got = video_qa.prism_config(video_qa.parse_args(["--video", "v", "--cutoff", "0.2"]))
    assert got == dataclasses.replace(changed, cutoff=0.2)
    got = video_qa.prism_config(video_qa.parse_args(["--video", "v", "--threshold", "0.5"]))
    assert got == changed.with_threshold(0.5)


def test_lmms_eval_prism_args_default_to_the_config():
    pytest.importorskip("lmms_eval")
    from prism_mm.eval import model

    params = inspect.signature(model.PrismQwenVL.__init__).parameters
    fields = {f.name for f in dataclasses.fields(PrismConfig)}
    assert set(model.CONFIG_ARGS) <= fields
    for name in list(model.CONFIG_ARGS) + ["threshold"]:
        assert params[name].default is None, f"model_arg {name} types a default again: None means PrismConfig's"


def test_lmms_eval_model_builds_the_configs_defaults_from_a_tiny_name(tmp_path):
    """The lmms-eval model resolves a tiny name as load_model does, and model_args not given are PrismConfig.video()'s
    (given ones arrive as strings)."""
    pytest.importorskip("lmms_eval")
    from prism_mm.eval.model import PrismQwenVL

    common = dict(pretrained="tiny-qwen2.5-vl", preprocess="qwen", device="cpu", stats_dir=str(tmp_path))
    assert PrismQwenVL(**common).prism_config == PrismConfig.video()
    lm = PrismQwenVL(**common, block_size="64", threshold="0.5", calibrate="false")
    assert lm.prism_config == PrismConfig.video(block_size=64, calibrate=False).with_threshold(0.5)
