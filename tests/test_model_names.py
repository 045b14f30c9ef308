"""One model-name resolution for every entry point (prism_mm.models.resolve_model): tiny names, local directories,
hub ids in the local Hugging Face cache; a name that is none of these fails at once, without asking the Hub (Hub access
off) or after one unanswered request (Hub access on, Hub unreachable), never after from_pretrained's retries."""
import socket
import time

import pytest

import prism_mm
from prism_mm.models import ModelNotAvailableError, resolve_model
from prism_mm.pipelines.video_qa import main
from prism_mm.tiny_models import TINY_MODELS, save_tiny

MISSING = "prism-mm-tests/no-such-model"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a host name or open a connection is recorded (and refused); the test asserts none."""
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append((what, args[:2]))
            raise OSError(f"test: no network ({what})")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(time, "sleep", refuse("time.sleep (a retry)"))
    return attempts


def hub_access(monkeypatch, on: bool):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", not on)


def test_a_missing_hub_id_fails_at_once_without_a_request(no_network, monkeypatch):
    hub_access(monkeypatch, False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: pytest.fail("a Hub session was opened"))
    for call in (lambda: prism_mm.load_model(MISSING), lambda: prism_mm.load_model(MISSING, random_weights=True),
                 lambda: resolve_model(MISSING)):
        with pytest.raises(ModelNotAvailableError, match="not available offline.*local directory"):
            call()
    assert no_network == []


def test_an_unreachable_hub_is_asked_once(no_network, monkeypatch):
    """Hub access on but no answer: one HEAD request, no retry, then the clear error."""
    hub_access(monkeypatch, True)
    import huggingface_hub

    asked = []

    class Unreachable:
        def head(self, url, **kwargs):
            asked.append(url)
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", Unreachable)
    with pytest.raises(ModelNotAvailableError, match=r"did not answer: ConnectionError: \[Errno -2\]"):
        prism_mm.load_model(MISSING)
    assert len(asked) == 1 and asked[0].endswith(f"{MISSING}/resolve/main/config.json")
    assert no_network == []


def fake_hub_cache(cache, repo_id: str, model_type: str):
    """A tiny model laid out as huggingface_hub caches a download: refs/main -> snapshots/<commit>/."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    save_tiny(model_type, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_a_cached_hub_id_loads_offline(tmp_path, no_network, monkeypatch):
    hub_access(monkeypatch, False)
    cache = fake_hub_cache(tmp_path / "hub", "prism-mm-tests/cached-tiny", "qwen2_5_vl")
    assert resolve_model("prism-mm-tests/cached-tiny", cache_dir=cache) == "prism-mm-tests/cached-tiny"
    model, processor = prism_mm.load_model("prism-mm-tests/cached-tiny", attn="dense", cache_dir=str(cache))
    assert model.config.model_type == "qwen2_5_vl" and processor is not None
    assert no_network == []


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl"])
def test_tiny_names_load_through_the_public_load_model(name, no_network):
    """A tiny name is what VideoQA, the CLI, the lmms-eval model and the chat page accept; prism_mm.load_model too."""
    model, processor = prism_mm.load_model(name, attn="prism")
    assert model.config.model_type == TINY_MODELS[name] and processor is not None
    assert no_network == []


def test_every_vl_model_type_has_a_tiny_model():
    from prism_mm.models import VL_MODEL_TYPES

    assert sorted(TINY_MODELS.values()) == sorted(VL_MODEL_TYPES)


def test_cli_missing_model_is_one_line_exit_2_without_a_request(no_network, monkeypatch, capsys, tmp_path):
    hub_access(monkeypatch, False)
    code = main(["--video", str(tmp_path / "clip.mp4"), "--question", "q", "--model", MISSING, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: model '{MISSING}' is not available offline"), err
    assert no_network == []
