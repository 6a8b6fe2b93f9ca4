"""Distribution metrics: the tally (one type for evaluation and the live stream), MAE, KL, TVD,
chi-square, the bootstrap CI and the iid-sampling noise floor."""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import chisquare

from distctl.attributes import Attribute, get_attribute
from distctl.errors import DistctlError
from distctl.targets import Target, same_target

# As the paper computes KL, so an unseen class with target mass gives a large but finite value.
KL_EPSILON = 1e-10


def _classes(target: Mapping[str, float], shares: Mapping[str, float]) -> list[str]:
    return list(dict.fromkeys([*target, *shares]))


def mae(target: Mapping[str, float], shares: Mapping[str, float]) -> float:
    classes = _classes(target, shares)
    return sum(abs(target.get(c, 0.0) - shares.get(c, 0.0)) for c in classes) / len(classes)


def kl(target: Mapping[str, float], shares: Mapping[str, float]) -> float:
    value = sum(
        t * math.log(t / (shares.get(c, 0.0) + KL_EPSILON)) for c, t in target.items() if t > 0
    )
    # the epsilon makes a perfect match come out at about -1e-10; a divergence is never negative
    return max(value, 0.0)


def tvd(target: Mapping[str, float], shares: Mapping[str, float]) -> float:
    classes = _classes(target, shares)
    return 0.5 * sum(abs(target.get(c, 0.0) - shares.get(c, 0.0)) for c in classes)


def chi_square_p(counts: Mapping[str, int], target: Mapping[str, float]) -> float | None:
    """Goodness of fit of the valid counts to the target; None without a valid count."""
    total = sum(counts.values())
    if total == 0:
        return None
    if any(counts.get(c, 0) > 0 for c, t in target.items() if t <= 0):
        return 0.0  # a class the target rules out was observed: impossible under the target
    support = [c for c, t in target.items() if t > 0]
    if len(support) < 2:
        return 1.0  # one possible class: every sample agrees with the target
    mass = sum(target[c] for c in support)
    observed = [counts.get(c, 0) for c in support]
    expected = [total * target[c] / mass for c in support]
    return float(chisquare(observed, expected).pvalue)


def _class_list(attribute_or_classes: str | Attribute | Sequence[str]) -> tuple[str, ...]:
    if isinstance(attribute_or_classes, str | Attribute):
        return get_attribute(attribute_or_classes).classes
    return tuple(attribute_or_classes)


@dataclass
class Tally:
    """Counts of the classes that generations' texts express, against a target."""

    target: Target
    n: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    invalid: int = 0
    steered: int = 0
    consistent: int = 0

    def __post_init__(self) -> None:
        self.counts = {c: self.counts.get(c, 0) for c in self.target}

    @classmethod
    def new(
        cls, attribute_or_classes: str | Attribute | Sequence[str], target: Mapping[str, float]
    ) -> "Tally":
        classes = _class_list(attribute_or_classes)
        unknown = set(target) - set(classes)
        if unknown:
            raise DistctlError(
                f"target has classes {sorted(unknown)} outside {', '.join(classes)}", "target"
            )
        return cls(target={c: float(target.get(c, 0.0)) for c in classes})

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.target)

    @property
    def valid(self) -> int:
        return self.n - self.invalid

    def add(self, extracted: str | None, assigned: str | None = None) -> None:
        for name, value in (("extracted", extracted), ("assigned", assigned)):
            if value is not None and value not in self.counts:
                raise DistctlError(
                    f"{name} class {value!r} is not one of {', '.join(self.classes)}", name
                )
        self.n += 1
        if extracted is None:
            self.invalid += 1
        else:
            self.counts[extracted] += 1
        if assigned is not None:
            self.steered += 1
            self.consistent += extracted == assigned

    @property
    def invalid_rate(self) -> float:
        # 0 before the first generation, so the live gauge is always a number.
        return self.invalid / self.n if self.n else 0.0

    @property
    def shares(self) -> dict[str, float]:
        valid = self.valid
        return {c: (k / valid if valid else 0.0) for c, k in self.counts.items()}

    @property
    def mae(self) -> float:
        return mae(self.target, self.shares) if self.valid else 1.0 / len(self.target)

    @property
    def kl(self) -> float | None:
        return kl(self.target, self.shares) if self.valid else None

    @property
    def tvd(self) -> float | None:
        return tvd(self.target, self.shares) if self.valid else None

    @property
    def consistency(self) -> float | None:
        return self.consistent / self.steered if self.steered else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "counts": dict(self.counts),
            "invalid": self.invalid,
            "invalid_rate": self.invalid_rate,
            "shares": self.shares,
            "target": dict(self.target),
            "mae": self.mae,
            "kl": self.kl,
            "tvd": self.tvd,
            "steered": self.steered,
            "consistency": self.consistency,
        }


OccupationKey = tuple[str | None, str | None]


class Evaluation:
    """Tallies grouped by (country, occupation), with the paper's overall figures."""

    def __init__(self, attribute_or_classes: str | Attribute | Sequence[str]) -> None:
        self.classes = _class_list(attribute_or_classes)
        self.tallies: dict[OccupationKey, Tally] = {}

    def add(
        self,
        key: OccupationKey,
        target: Mapping[str, float],
        extracted: str | None,
        assigned: str | None = None,
    ) -> None:
        tally = self.tallies.get(key)
        if tally is None:
            tally = Tally.new(self.classes, target)
        elif not same_target(tally.target, target):
            raise DistctlError(f"occupation {key} was already counted against another target")
        tally.add(extracted, assigned)
        # Only after a successful add, so no empty tally ever enters the means.
        self.tallies[key] = tally

    def overall(self) -> dict[str, Any]:
        tallies = list(self.tallies.values())
        n = sum(t.n for t in tallies)
        steered = sum(t.steered for t in tallies)
        kls = [t.kl for t in tallies if t.kl is not None]
        tvds = [t.tvd for t in tallies if t.tvd is not None]
        return {
            "occupations": len(tallies),
            "n": n,
            "mae": _mean(t.mae for t in tallies),
            "kl": _mean(kls),
            "tvd": _mean(tvds),
            "invalid_rate": sum(t.invalid for t in tallies) / n if n else None,
            "consistency": sum(t.consistent for t in tallies) / steered if steered else None,
        }

    def per_occupation(self) -> list[dict[str, Any]]:
        return [
            {
                "country": country,
                "occupation": occupation,
                "tally": tally.to_dict(),
                "chi_square_p": chi_square_p(tally.counts, tally.target),
            }
            for (country, occupation), tally in self.tallies.items()
        ]


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _mae_rows(target: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """MAE of each row of class counts (last axis) against target; rows without a valid count
    score 1/K, as an occupation with no valid answer does."""
    valid = counts.sum(axis=-1, keepdims=True)
    shares = np.divide(counts, valid, out=np.zeros(counts.shape), where=valid > 0)
    scores = np.abs(shares - target).mean(axis=-1)
    return np.where(valid[..., 0] > 0, scores, 1.0 / target.shape[-1])


def bootstrap_mae_ci(
    evaluation: Evaluation, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of the overall MAE, resampling generations within each occupation."""
    if not evaluation.tallies:
        raise DistctlError("the evaluation has no generations to resample", field="evaluation")
    if not 0 < level < 1:
        raise DistctlError(f"level must be between 0 and 1, got {level}", field="level")
    if n_boot < 1:
        raise DistctlError(f"n_boot must be at least 1, got {n_boot}", field="n_boot")
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for tally in evaluation.tallies.values():
        # Invalid generations are resampled too (last column), then dropped from the shares.
        observed = np.array([*tally.counts.values(), tally.invalid], dtype=float)
        draws = rng.multinomial(tally.n, observed / tally.n, size=n_boot)
        total += _mae_rows(np.array(list(tally.target.values())), draws[:, :-1])
    means = total / len(evaluation.tallies)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def noise_floor(targets: list[Target], n: int, sims: int = 2000, seed: int = 0) -> float:
    """Expected mean-over-occupations MAE of an ideal sampler drawing n iid answers from each
    target: what a perfectly calibrated model scores by chance (simulated, seeded)."""
    if not targets:
        raise DistctlError("the noise floor needs at least one target", field="targets")
    if n < 1:
        raise DistctlError(f"n must be at least 1, got {n}", field="n")
    rng = np.random.default_rng(seed)
    floors = []
    for target in targets:
        p = np.array(list(target.values()), dtype=float)
        draws = rng.multinomial(n, p / p.sum(), size=sims)
        floors.append(_mae_rows(p, draws).mean())
    return float(np.mean(floors))
