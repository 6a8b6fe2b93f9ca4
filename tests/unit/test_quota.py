from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distctl.errors import DistctlError
from distctl.quota import allocate, prefix_bound


@st.composite
def rational_targets(draw: st.DrawFn) -> dict[str, Fraction]:
    k = draw(st.integers(1, 5))
    weights = draw(st.lists(st.integers(0, 60), min_size=k, max_size=k).filter(any))
    total = sum(weights)
    return {f"c{i}": Fraction(w, total) for i, w in enumerate(weights)}


@settings(max_examples=300, deadline=None)
@given(rational_targets(), st.integers(0, 200))
def test_prefix_bound_holds_exactly(target: dict[str, Fraction], n: int) -> None:
    k = len(target)
    bound = prefix_bound(k)
    out = allocate(target, n)
    assert len(out) == n
    counts = Counter[str]()
    for t, cls in enumerate(out, start=1):
        counts[cls] += 1
        for c, p in target.items():
            assert abs(counts[c] - t * p) <= bound
    for c, p in target.items():
        assert abs(counts[c] - n * p) < 1
        if p == 0:
            assert counts[c] == 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=2, max_size=5).filter(lambda w: sum(w) > 0.1),
    st.integers(1, 200),
)
def test_float_targets(weights: list[float], n: int) -> None:
    total = sum(weights)
    target = {f"c{i}": w / total for i, w in enumerate(weights)}
    counts = Counter(allocate(target, n))
    for c, p in target.items():
        assert abs(counts[c] - n * p) < 1 + 1e-6


def test_examples() -> None:
    assert allocate({"male": 0.5, "female": 0.5}, 4) == ["male", "female", "male", "female"]
    assert allocate({"a": 1.0}, 3) == ["a", "a", "a"]
    assert allocate({"a": 0.0, "b": 1.0}, 2) == ["b", "b"]
    assert allocate({"a": 0.5, "b": 0.5}, 0) == []
    real = {"male": 0.1435, "female": 0.8565}
    assert Counter(allocate(real, 100)) == {"male": 14, "female": 86}
    assert allocate(real, 50) == allocate(real, 50)
    assert prefix_bound(2) == Fraction(1, 2) and prefix_bound(3) == Fraction(3, 4)


def test_errors() -> None:
    with pytest.raises(DistctlError) as e:
        allocate({"a": 0.5}, -1)
    assert e.value.field == "n"
    with pytest.raises(DistctlError) as e:
        allocate({"a": 0.0}, 3)
    assert e.value.field == "target"
    with pytest.raises(DistctlError):
        allocate({"a": -0.5, "b": 1.5}, 3)
