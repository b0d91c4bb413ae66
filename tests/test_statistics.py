"""The experiments' statistics against hand computations."""

from __future__ import annotations

import math
import sys

import pytest

from p2pgan.experiments.statistics import mean_se, paired_test

pytestmark = pytest.mark.timeout(30)


def test_mean_and_standard_error_by_hand() -> None:
    # values 1, 2, 6: mean 3, sample variance (4 + 1 + 9) / 2 = 7, s.e. sqrt(7 / 3)
    m, se = mean_se([1.0, 2.0, 6.0])
    assert m == pytest.approx(3.0) and se == pytest.approx(math.sqrt(7 / 3))
    assert mean_se([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_se([])


def test_paired_t_test_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641; one-sided p (2 dof) = 0.03709
    a, b = [11.0, 22.0, 33.0], [10.0, 20.0, 30.0]
    res = paired_test(a, b, alternative="greater")
    assert res["t"] == pytest.approx(2 * math.sqrt(3)) and res["p"] == pytest.approx(0.037089, abs=1e-5)
    assert res["significant"] and res["n"] == 3 and res["mean_difference"] == pytest.approx(2.0)
    # the other direction is not significant, two-sided doubles the p-value
    assert not paired_test(a, b, alternative="less")["significant"]
    assert paired_test(a, b, alternative="two-sided")["p"] == pytest.approx(2 * 0.037089, abs=1e-5)
    # no spread in the differences: t undefined; equal samples are "no difference", never significant
    same = paired_test([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(same["t"]) and same["p"] == 1.0 and not same["significant"]
    with pytest.raises(ValueError):
        paired_test([1.0], [2.0])


def test_holm_by_hand() -> None:
    # m = 4, sorted 0.01, 0.02, 0.03, 0.5: 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, max(0.06, 2 x 0.03) = 0.06, 0.5
    from p2pgan.experiments.statistics import holm

    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])  # adjusted values never decrease with rank
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # and stay <= 1
    out = holm([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)  # a missing test does not count in m
    assert holm([]) == []


def test_figure_2s_one_significant_result_is_not_significant_after_holm() -> None:
    """docs/results.md: p = 0.011 is one of the 20 stored tests; corrected for them it is 0.22."""
    import json
    from pathlib import Path

    from p2pgan.experiments.statistics import holm

    root = Path(__file__).resolve().parents[1]
    tests = json.loads((root / "docs" / "results" / "convergence" / "convergence.json").read_text())["tests"]
    adjusted = holm([t["p"] for t in tests])
    smallest = min(range(len(tests)), key=lambda i: tests[i]["p"])
    assert len(tests) == 20 and round(tests[smallest]["p"], 3) == 0.011 and round(adjusted[smallest], 2) == 0.22
    assert "| 0.011 | 0.22 |" in (root / "docs" / "results.md").read_text()


# -- the Figure 2 script's statistics: the tail window and the direction of its one-sided tests ----------
def _exp_convergence():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "exp_convergence.py"
    spec = importlib.util.spec_from_file_location("exp_convergence_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(xs: list[float], per_peer: dict[str, list[list[float]]]) -> dict:
    return {"x": xs, "scores": per_peer, "seconds": 1.0}


def test_tail_window_is_the_last_fifth_of_training() -> None:
    """Evaluations at x = 0..10, score = x on both peers: the tail (x >= 8) averages 8, 9, 10 = 9. A window
    of 30 % (mean 8.5), a strict x > 8 (9.5) or the last evaluation alone (10) each give another number."""
    exp = _exp_convergence()
    xs = [float(x) for x in range(11)]
    res = {"runs": {"0": _run(xs, {"is": [[x, x] for x in xs]}), "1": _run(xs, {"is": [[x + 1, x + 1] for x in xs]})}}
    finals, tails, spreads = exp.per_seed(res, "is", 2)
    assert tails == [9.0, 10.0] and finals == [10.0, 11.0] and spreads == [0.0, 0.0]
    assert exp.TAIL == 0.2  # and docs/results.md says so
    assert 'tail" = mean over the\nevaluations in the last 20 % of training' in (
        exp.Path(exp.__file__).resolve().parents[1] / "docs" / "results.md").read_text()


def _setting(variant: str, schedule: str, scores_by_seed: list[dict[str, float]]) -> dict:
    xs = [0.0, 1.0]
    runs = {str(i): _run(xs, {k: [[v, v], [v, v]] for k, v in s.items()}) for i, s in enumerate(scores_by_seed)}
    return {"variant": variant, "schedule": schedule, "runs": runs}


def test_one_sided_tests_ask_whether_rand_dp_is_better_in_each_scores_own_direction() -> None:
    """Rand-DP clearly better than DP in every seed: higher IS and LOWER FID. 'Better' must be significant
    for both; a test in the wrong direction (greater for FID, less for IS) would give p close to 1."""
    exp = _exp_convergence()
    dp = [{"is": 5.0, "fid": 50.0}, {"is": 5.5, "fid": 45.0}, {"is": 6.0, "fid": 52.0}]
    rand = [{"is": 6.0, "fid": 40.0}, {"is": 6.6, "fid": 34.0}, {"is": 7.1, "fid": 41.5}]
    results = {"dp/overlap": _setting("dp", "overlap", dp), "rand-dp/overlap": _setting("rand-dp", "overlap", rand)}
    _, tests = exp.summarize("digits", 2, results, ("is", "fid"))
    better = {t["score"]: t for t in tests if t["question"].startswith("Rand-DP better than DP")}
    assert better["is tail"]["alternative"] == "greater" and better["fid tail"]["alternative"] == "less"
    assert better["is tail"]["significant"] and better["fid tail"]["significant"]
    assert better["is tail"]["p"] < 0.05 and better["fid tail"]["p"] < 0.05
    # and the same data the other way round is not "better"
    swapped = {"dp/overlap": _setting("dp", "overlap", rand), "rand-dp/overlap": _setting("rand-dp", "overlap", dp)}
    _, tests = exp.summarize("digits", 2, swapped, ("is", "fid"))
    assert not any(t["significant"] for t in tests if t["question"].startswith("Rand-DP better than DP"))
