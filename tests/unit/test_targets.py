import math

import pytest

from distctl.errors import DistctlError
from distctl.targets import resolve_target, same_target, target_kind, uniform


def test_uniform_in_class_order() -> None:
    assert uniform("gender") == {"male": 0.5, "female": 0.5}
    race = uniform("race")
    assert next(iter(race)) == "white" and all(v == pytest.approx(0.2) for v in race.values())
    assert resolve_target("sentiment", "uniform") == uniform("sentiment")


def test_real_world_gender() -> None:
    t = resolve_target("gender", "real_world", occupation="Civil engineers", country="uk")
    assert t["male"] == pytest.approx(80072 / (80072 + 9148))
    assert list(t) == ["male", "female"]


def test_real_world_errors() -> None:
    with pytest.raises(DistctlError, match="exists for gender only") as e:
        resolve_target("race", "real_world", occupation="Registered nurses", country="us")
    assert e.value.field == "target"
    with pytest.raises(DistctlError, match="needs an occupation and a country") as e:
        resolve_target("gender", "real_world", country="us")
    assert e.value.field == "occupation"
    with pytest.raises(DistctlError, match="needs an occupation and a country") as e:
        resolve_target("gender", "real_world", occupation="Registered nurses")
    assert e.value.field == "country"
    with pytest.raises(DistctlError) as e:
        resolve_target("gender", "real_world", occupation="Astronauts", country="us")
    assert e.value.field == "occupation"


def test_explicit_fills_omitted_classes_with_zero() -> None:
    t = resolve_target("sentiment", {"neutral": 0.25, "Positive": 0.75})
    assert t == {"positive": 0.75, "negative": 0.0, "neutral": 0.25}
    assert list(t) == ["positive", "negative", "neutral"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"male": 0.5, "robot": 0.5}, "unknown gender class"),
        ({"male": -0.5, "female": 1.5}, ">= 0"),
        ({"male": math.nan, "female": 0.5}, "finite"),
        ({"male": math.inf}, "finite"),
        ({"male": "0.5", "female": 0.5}, "number"),
        ({"male": True}, "number"),
        ({"male": 0.5, "female": 0.4}, "sum to 1"),
        ("gaussian", "allowed"),
        (["male"], "allowed"),
    ],
)
def test_explicit_errors_name_target(spec: object, needle: str) -> None:
    with pytest.raises(DistctlError, match=needle) as e:
        resolve_target("gender", spec)
    assert e.value.field == "target"


def test_sum_tolerance() -> None:
    resolve_target("gender", {"male": 0.3, "female": 0.7 + 5e-7})
    with pytest.raises(DistctlError):
        resolve_target("gender", {"male": 0.3, "female": 0.7 + 5e-6})


def test_kind_and_same() -> None:
    assert target_kind("uniform") == "uniform"
    assert target_kind("real_world") == "real_world"
    assert target_kind({"male": 1.0}) == "explicit"
    assert same_target({"male": 0.5, "female": 0.5}, {"male": 0.5 + 1e-8, "female": 0.5})
    assert not same_target({"male": 1.0}, {"male": 0.5, "female": 0.5})
    assert same_target({"male": 1.0}, {"male": 1.0, "female": 0.0})
