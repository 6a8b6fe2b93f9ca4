import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distctl.errors import DistctlError
from distctl.metrics import (
    Evaluation,
    Tally,
    bootstrap_mae_ci,
    chi_square_p,
    kl,
    mae,
    noise_floor,
    tvd,
)
from distctl.targets import uniform

KEYS = [
    "n",
    "counts",
    "invalid",
    "invalid_rate",
    "shares",
    "target",
    "mae",
    "kl",
    "tvd",
    "steered",
    "consistency",
]


def test_tally_hand_computed() -> None:
    tally = Tally.new("gender", uniform("gender"))
    for extracted in ("male", "male", "male", "female", None):
        tally.add(extracted)
    d = tally.to_dict()
    assert list(d) == KEYS
    assert d["n"] == 5 and d["counts"] == {"male": 3, "female": 1} and d["invalid"] == 1
    assert d["invalid_rate"] == pytest.approx(0.2)
    assert d["shares"] == {"male": 0.75, "female": 0.25}
    assert d["mae"] == pytest.approx(0.25) and d["tvd"] == pytest.approx(0.25)
    assert d["kl"] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert d["steered"] == 0 and d["consistency"] is None


def test_tally_empty_and_all_invalid() -> None:
    tally = Tally.new(["a", "b", "c"], {"a": 1.0})
    assert tally.target == {"a": 1.0, "b": 0.0, "c": 0.0}
    d = tally.to_dict()
    assert d["mae"] == pytest.approx(1 / 3) and d["kl"] is None and d["tvd"] is None
    assert d["invalid_rate"] == 0.0
    tally.add(None, assigned="a")
    d = tally.to_dict()
    assert d["shares"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert d["mae"] == pytest.approx(1 / 3) and d["kl"] is None
    assert d["invalid_rate"] == 1.0 and d["steered"] == 1 and d["consistency"] == 0.0


def test_tally_consistency_and_kl_finite() -> None:
    tally = Tally.new("gender", {"male": 0.5, "female": 0.5})
    tally.add("male", "male")
    tally.add("male", "female")
    tally.add("female")
    assert tally.steered == 2 and tally.consistency == 0.5
    only_male = Tally.new("gender", {"male": 0.5, "female": 0.5})
    only_male.add("male")
    assert math.isfinite(only_male.kl) and only_male.kl > 10


def test_tally_rejects_unknown_classes() -> None:
    with pytest.raises(DistctlError):
        Tally.new("gender", {"robot": 1.0})
    tally = Tally.new("gender", uniform("gender"))
    with pytest.raises(DistctlError) as e:
        tally.add("robot")
    assert e.value.field == "extracted" and tally.n == 0


_shares = st.lists(st.integers(0, 20), min_size=2, max_size=5).filter(any)


@given(_shares, _shares)
def test_mae_zero_iff_equal(a: list[int], b: list[int]) -> None:
    k = min(len(a), len(b))
    a, b = a[:k], b[:k]
    if not any(a) or not any(b):
        return
    ta = {str(i): x / sum(a) for i, x in enumerate(a)}
    tb = {str(i): x / sum(b) for i, x in enumerate(b)}
    assert mae(ta, ta) == 0 and tvd(ta, ta) == 0
    equal = all(math.isclose(ta[c], tb[c], abs_tol=1e-12) for c in ta)
    assert (mae(ta, tb) < 1e-12) == equal


def test_metric_functions() -> None:
    t = {"a": 0.5, "b": 0.5, "c": 0.0}
    s = {"a": 1.0, "b": 0.0, "c": 0.0}
    assert mae(t, s) == pytest.approx(1 / 3)
    assert tvd(t, s) == pytest.approx(0.5)
    assert kl(t, s) == pytest.approx(
        0.5 * math.log(0.5 / (1 + 1e-10)) + 0.5 * math.log(0.5 / 1e-10)
    )


def test_chi_square() -> None:
    t = {"a": 0.5, "b": 0.5, "c": 0.0}
    assert chi_square_p({"a": 0, "b": 0, "c": 0}, t) is None
    assert chi_square_p({"a": 50, "b": 50, "c": 0}, t) == pytest.approx(1.0)
    assert chi_square_p({"a": 90, "b": 10, "c": 0}, t) < 1e-6
    assert chi_square_p({"a": 5, "b": 5, "c": 1}, t) == 0.0
    assert chi_square_p({"a": 7, "b": 0}, {"a": 1.0, "b": 0.0}) == 1.0


def _evaluation(n: int, occupations: int = 5) -> Evaluation:
    evaluation = Evaluation("gender")
    for o in range(occupations):
        for i in range(n):
            evaluation.add(("us", f"o{o}"), uniform("gender"), "male" if i % 10 < 6 else "female")
    return evaluation


def test_evaluation_overall() -> None:
    evaluation = Evaluation("gender")
    target_a = {"male": 0.5, "female": 0.5}
    target_b = {"male": 0.8, "female": 0.2}
    for x in ("male", "female", None):
        evaluation.add(("us", "a"), target_a, x, assigned="male")
    evaluation.add(("us", "b"), target_b, None)
    overall = evaluation.overall()
    assert overall["occupations"] == 2 and overall["n"] == 4
    assert overall["mae"] == pytest.approx((0.0 + 0.5) / 2)  # b has no valid answer: 1/K
    assert overall["kl"] == pytest.approx(0.0, abs=1e-9)  # only a has a KL
    assert overall["tvd"] == pytest.approx(0.0)
    assert overall["invalid_rate"] == pytest.approx(0.5)
    assert overall["consistency"] == pytest.approx(1 / 3)
    rows = evaluation.per_occupation()
    assert [(r["country"], r["occupation"]) for r in rows] == [("us", "a"), ("us", "b")]
    assert rows[0]["tally"]["counts"] == {"male": 1, "female": 1}
    assert rows[0]["chi_square_p"] == pytest.approx(1.0) and rows[1]["chi_square_p"] is None
    with pytest.raises(DistctlError):
        evaluation.add(("us", "a"), target_b, "male")


def test_bootstrap_deterministic_and_narrows() -> None:
    small = _evaluation(100)
    assert bootstrap_mae_ci(small, seed=3) == bootstrap_mae_ci(small, seed=3)
    lo, hi = bootstrap_mae_ci(small)
    assert lo <= small.overall()["mae"] <= hi
    big_lo, big_hi = bootstrap_mae_ci(_evaluation(10_000))
    assert big_hi - big_lo < hi - lo
    assert big_lo <= 0.1 <= big_hi


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 50))
def test_bootstrap_deterministic_property(seed: int, n: int) -> None:
    evaluation = _evaluation(n, occupations=3)
    a = bootstrap_mae_ci(evaluation, n_boot=200, seed=seed)
    assert a == bootstrap_mae_ci(evaluation, n_boot=200, seed=seed)
    assert a[0] <= a[1]


def test_bootstrap_is_fast_at_paper_scale() -> None:
    import time

    evaluation = Evaluation("gender")
    for o in range(39):
        for i in range(100):
            evaluation.add((None, str(o)), uniform("gender"), ("male", "female", None)[i % 3])
    start = time.perf_counter()
    bootstrap_mae_ci(evaluation, n_boot=1000)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_errors() -> None:
    with pytest.raises(DistctlError):
        bootstrap_mae_ci(Evaluation("gender"))
    with pytest.raises(DistctlError):
        bootstrap_mae_ci(_evaluation(10), level=1.5)


def test_noise_floor() -> None:
    # E|X/100 - 1/2| for X ~ Binomial(100, 1/2) is C(100, 50) / 2**101 ~ 0.0398.
    exact = math.comb(100, 50) / 2**101
    assert noise_floor([uniform("gender")], 100, sims=20_000) == pytest.approx(exact, abs=2e-3)
    assert noise_floor([uniform("gender")], 100) == noise_floor([uniform("gender")], 100)
    skewed = noise_floor([{"male": 0.9, "female": 0.1}], 100)
    assert 0 < skewed < noise_floor([uniform("gender")], 100)
    assert noise_floor([{"male": 1.0, "female": 0.0}], 10) == 0.0
    assert noise_floor([uniform("gender")], 10_000) < noise_floor([uniform("gender")], 100)
