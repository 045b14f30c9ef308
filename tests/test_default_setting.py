"""benchmarks.default_setting's rule (issue #35): which checks a setting must pass, the paired needle comparison, and
the choice of the fastest passing setting (or prism 0.99 when none passes), on synthetic rows."""
import pytest

from benchmarks.default_setting import SETTINGS, checks, decide, kernel_time_ms, paired_drop_points

MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def rows(ppl: dict[str, float], drop: dict[str, int], samples: int = 60, density: dict[str, float] | None = None):
    """Every cell of both models at 16K and 32K: perplexity change ppl[setting] %, and `drop[setting]` more needles
    missed than dense (dense finds 50 of `samples`)."""
    out = []
    for model in MODELS:
        for n in (16384, 32768):
            for text in ("licences", "unseen"):
                for s in SETTINGS:
                    out.append({"model": model, "kind": "perplexity", "text": text, "tokens": n, "setting": s,
                                "ppl_change_pct": 0.0 if s == "dense" else ppl[s], "mean_density": 1.0})
            for form in ("one pass", "prefix"):
                for s in SETTINGS:
                    hits = 50 - (0 if s == "dense" else drop[s])
                    flags = [True] * hits + [False] * (samples - hits)
                    out.append({"model": model, "kind": "needles", "form": form, "tokens": n, "setting": s,
                                "samples": samples, "flags": flags,
                                "mean_density": 1.0 if s == "dense" else (density or {}).get(s, 0.5)})
    return out


SPARSE = [s for s in SETTINGS if s != "dense"]


def test_paired_drop_counts_points_below_dense_on_the_same_samples():
    assert paired_drop_points([True, False, False, False], [True, True, False, False]) == 25.0
    with pytest.raises(ValueError, match="same samples"):
        paired_drop_points([True], [True, False])


def test_a_setting_passes_only_within_both_limits_everywhere():
    ppl = {s: 0.5 for s in SPARSE} | {"prism@0.93": 1.5}
    drop = {s: 3 for s in SPARSE} | {"cutoff@0.001": 4}  # 3 of 60 = 5.0 points: at the limit; 4 = 6.7: over
    result = checks(rows(ppl, drop), MODELS)
    assert not result["prism@0.93"]["passed"], "perplexity +1.5% > +1%"
    assert not result["cutoff@0.001"]["passed"], "6.7 needle points below dense > 5"
    assert result["prism@0.99"]["passed"] and result["cutoff@0.005"]["passed"]
    # both models x 2 lengths x (2 texts + 2 forms)
    assert len(result["prism@0.99"]["checks"]) == 2 * 2 * 4


def test_too_few_samples_or_a_missing_cell_fails():
    ok = {s: 0.0 for s in SPARSE}, {s: 0 for s in SPARSE}
    assert not any(v["passed"] for v in checks(rows(*ok, samples=40), MODELS).values()), "fewer than 60 samples"
    partial = [r for r in rows(*ok) if not (r["model"] == MODELS[1] and r["tokens"] == 32768)]
    result = checks(partial, MODELS)
    assert not any(v["passed"] for v in result.values())
    assert any(value is None for _, value, _, _ in result["prism@0.99"]["checks"]), "a missing cell is reported as such"


def test_decide_takes_the_fastest_passing_setting_else_prism_099():
    ppl, drop = {s: 0.0 for s in SPARSE}, {s: 0 for s in SPARSE}
    density = {"prism@0.93": 0.2, "prism@0.95": 0.25, "prism@0.99": 0.45, "cutoff@0.001": 0.3, "cutoff@0.002": 0.15,
               "cutoff@0.005": 0.1}
    got = decide(rows(ppl | {"cutoff@0.005": 2.0}, drop, density=density), MODELS)
    assert got["default"] == "cutoff@0.002", "the sparsest passing setting is the fastest"
    assert got["settings"]["cutoff@0.002"]["prefill_s_128k"] < got["settings"]["prism@0.99"]["prefill_s_128k"]
    none = decide(rows({s: 5.0 for s in SPARSE}, drop, density=density), MODELS)
    assert none["default"] == "prism@0.99" and none["fallback"]


def test_kernel_time_grows_with_density_between_the_table_points():
    times = [sum(kernel_time_ms(d)[:2]) for d in (0.05, 0.1, 0.3, 0.5, 1.0)]
    assert times == sorted(times) and times[0] > 0
    select, sparse, dense = kernel_time_ms(1.0)
    assert 0.8 < sparse / dense < 1.3, "the sparse kernel over every block costs about cuDNN's dense time"
