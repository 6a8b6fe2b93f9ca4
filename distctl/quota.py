"""Quota allocation for `exact` mode: which class each of n samples is assigned.

Tijdeman's solution of the chairman assignment problem (R. Tijdeman, "The chairman assignment
problem", Discrete Mathematics 32, 1980): the j-th assignment of class k may be made from step
E = ceil((j - B) / p_k) on and is due by step D = floor((j - 1 + B) / p_k) + 1, with
B = 1 - 1/(2K - 2) for K classes of positive probability. At each step the released assignment
with the earliest due step is made (ties to the first class). Tijdeman proves every assignment
then meets its window, so after every prefix of t samples |count_k - t p_k| <= B, and so the
final counts differ from n p_k by less than 1. Arithmetic is exact (Fraction) because the bound
is tight: rounding could push a count across it.
"""

import math
from collections.abc import Mapping
from fractions import Fraction

from distctl.errors import DistctlError


def _exact_probabilities(target: Mapping[str, float | Fraction]) -> dict[str, Fraction]:
    exact: dict[str, Fraction] = {}
    for cls, p in target.items():
        if isinstance(p, float) and not math.isfinite(p):
            raise DistctlError(f"target probability for {cls!r} must be finite", field="target")
        q = p if isinstance(p, Fraction) else Fraction(p).limit_denominator(10**9)
        if q < 0:
            raise DistctlError(f"target probability for {cls!r} must be >= 0", field="target")
        exact[cls] = q
    total = sum(exact.values(), Fraction(0))
    if total <= 0:
        raise DistctlError("target needs a class with positive probability", field="target")
    # Float targets sum to 1 only approximately; the bound needs them to sum to exactly 1.
    return {cls: q / total for cls, q in exact.items()}


def prefix_bound(k: int) -> Fraction:
    """Tijdeman's bound on |count - t p| for k classes of positive probability."""
    return Fraction(0) if k <= 1 else 1 - Fraction(1, 2 * k - 2)


def allocate(target: Mapping[str, float | Fraction], n: int) -> list[str]:
    """The class of each sample index 0..n-1 (deterministic)."""
    if n < 0:
        raise DistctlError(f"n must be >= 0, got {n}", field="n")
    p = {cls: q for cls, q in _exact_probabilities(target).items() if q > 0}
    bound = prefix_bound(len(p))
    counts = dict.fromkeys(p, 0)
    out: list[str] = []
    for t in range(1, n + 1):
        best: tuple[int, str] | None = None
        for cls, q in p.items():
            j = counts[cls] + 1
            if math.ceil((j - bound) / q) > t:
                continue  # not released yet: assigning now would overshoot t p + B
            due = math.floor((j - 1 + bound) / q) + 1
            if best is None or due < best[0]:
                best = (due, cls)
        # Tijdeman's theorem guarantees a released class at every step.
        assert best is not None
        counts[best[1]] += 1
        out.append(best[1])
    return out
