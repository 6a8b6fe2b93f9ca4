"""Target distributions: named ("uniform", "real_world") or explicit class -> probability maps."""

import math
from collections.abc import Mapping
from numbers import Real
from typing import Literal

from distctl.attributes import Attribute, get_attribute
from distctl.errors import DistctlError
from distctl.occupations import Occupation, check_country, get_occupation

# Every class of the attribute is present, in the attribute's class order, zeros included.
Target = dict[str, float]

TargetSpec = str | Mapping[str, float]

SUM_TOLERANCE = 1e-6

_ALLOWED = "'uniform', 'real_world' or a class -> probability map"


def uniform(attribute: str | Attribute) -> Target:
    attr = get_attribute(attribute)
    return {c: 1.0 / attr.k for c in attr.classes}


def target_kind(spec: object) -> Literal["uniform", "real_world", "explicit"]:
    if isinstance(spec, Mapping):
        return "explicit"
    if spec == "uniform" or spec == "real_world":
        return spec
    raise DistctlError(f"unknown target {spec!r}; allowed: {_ALLOWED}", field="target")


def resolve_target(
    attribute: str | Attribute,
    spec: object,
    *,
    occupation: str | Occupation | None = None,
    country: str | None = None,
) -> Target:
    attr = get_attribute(attribute)
    kind = target_kind(spec)
    if kind == "uniform":
        return uniform(attr)
    if kind == "real_world":
        return _real_world(attr, occupation, country)
    return _explicit(attr, spec)  # type: ignore[arg-type]


def _real_world(
    attr: Attribute, occupation: str | Occupation | None, country: str | None
) -> Target:
    if attr.name != "gender":
        raise DistctlError(
            f"target 'real_world' exists for gender only (not {attr.name}); "
            "use 'uniform' or a class -> probability map",
            field="target",
        )
    if isinstance(occupation, Occupation):
        return occupation.real_world()
    if not occupation:
        raise DistctlError("target 'real_world' needs an occupation and a country", "occupation")
    if not country:
        raise DistctlError("target 'real_world' needs an occupation and a country", "country")
    return get_occupation(check_country(country), occupation).real_world()


def _explicit(attr: Attribute, spec: Mapping[object, object]) -> Target:
    allowed = ", ".join(attr.classes)
    target = dict.fromkeys(attr.classes, 0.0)
    seen: set[str] = set()
    for key, value in spec.items():
        cls = " ".join(key.split()).lower() if isinstance(key, str) else None
        if cls not in target:
            raise DistctlError(
                f"unknown {attr.name} class {key!r} in target; allowed: {allowed}", field="target"
            )
        if cls in seen:
            raise DistctlError(f"class {cls!r} appears twice in target", field="target")
        seen.add(cls)
        # bool is a Real in Python, but true/false is never a probability.
        if isinstance(value, bool) or not isinstance(value, Real):
            raise DistctlError(
                f"target probability for {cls!r} must be a number, got {value!r}", field="target"
            )
        p = float(value)
        if not math.isfinite(p):
            raise DistctlError(
                f"target probability for {cls!r} must be finite, got {value!r}", field="target"
            )
        if p < 0:
            raise DistctlError(
                f"target probability for {cls!r} must be >= 0, got {value!r}", field="target"
            )
        target[cls] = p
    total = math.fsum(target.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise DistctlError(
            f"target probabilities must sum to 1 (within {SUM_TOLERANCE:g}), got {total:.6g}",
            field="target",
        )
    return target


def same_target(a: Mapping[str, float], b: Mapping[str, float], tol: float = 1e-6) -> bool:
    return all(abs(a.get(c, 0.0) - b.get(c, 0.0)) <= tol for c in set(a) | set(b))
