"""Request -> generation spec and adapter choice (service/routing.py), on the fake engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from distctl.errors import DistctlError
from distctl.generation import Generator, Mode
from distctl.manifest import OccupationTarget, TargetRecord
from distctl.occupations import get_occupation
from distctl.prompts import canonical_prompt
from service.registry import AdapterRegistry
from service.routing import route
from service.schemas import GenerateRequest
from tests.fakes import FakeEngine, FakeTokenizer
from tests.service_support import BODY, make_settings, write_manifest_adapter


async def _registry(root: Path) -> AdapterRegistry:
    registry = AdapterRegistry(FakeEngine(), root)
    await registry.load_all()
    return registry


def _route(registry: AdapterRegistry, tmp_path: Path, **fields: object):
    settings = make_settings(tmp_path)
    req = GenerateRequest.model_validate({**BODY, **fields})
    return route(req, registry, Generator(FakeEngine(), FakeTokenizer()), settings)


async def test_occupation_builds_the_canonical_prompt_and_real_world_target(tmp_path: Path):
    registry = await _registry(tmp_path / "adapters")
    routed = _route(registry, tmp_path, target="real_world", mode="exact")
    nurses = get_occupation("us", "Registered nurses")
    assert routed.spec.prompt == canonical_prompt("attribute", "gender", nurses)
    assert routed.spec.target == nurses.real_world()
    assert routed.spec.mode is Mode.EXACT and routed.spec.adapter is None
    assert routed.lease is None


async def test_free_prompt_goes_through_unchanged(tmp_path: Path):
    registry = await _registry(tmp_path / "adapters")
    body = {"attribute": "race", "target": "uniform", "prompt": "Describe a chef.", "n": 3}
    routed = route(
        GenerateRequest.model_validate(body),
        registry,
        Generator(FakeEngine(), FakeTokenizer()),
        make_settings(tmp_path),
    )
    assert routed.spec.prompt == "Describe a chef."
    assert routed.spec.target["asian"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "hi"}, "prompt"),  # prompt and occupation together
        ({"occupation": None, "country": None}, "occupation"),  # neither
        ({"country": None}, "country"),
        ({"occupation": "Astronaut"}, "occupation"),
        (
            {"occupation": None, "country": None, "prompt": "hi", "target": "real_world"},
            "occupation",
        ),
        ({"attribute": "race", "target": "real_world"}, "target"),
        ({"target": {"male": 0.7, "female": 0.7}}, "target"),
        ({"target": {"male": 0.5, "robot": 0.5}}, "target"),
        ({"n": 101}, "n"),
        ({"mode": "plain", "retries": 2}, "retries"),
        ({"mode": "calibrated"}, "adapter"),  # no adapter trained for it
        ({"adapter": "missing"}, "adapter"),
        ({"max_tokens": 5000}, "max_tokens"),
    ],
)
async def test_bad_fields_name_the_field(tmp_path: Path, fields: dict, field: str):
    registry = await _registry(tmp_path / "adapters")
    with pytest.raises(DistctlError) as caught:
        _route(registry, tmp_path, **fields)
    assert caught.value.field == field


async def test_calibrated_takes_the_newest_matching_steering_adapter(tmp_path: Path):
    root = tmp_path / "adapters"
    write_manifest_adapter(root, "old")
    write_manifest_adapter(root, "new")
    write_manifest_adapter(root, "new")  # v2
    write_manifest_adapter(root, "race", attribute="race")
    write_manifest_adapter(root, "story", task="story")
    write_manifest_adapter(root, "ift", method="ift")
    skewed = TargetRecord(kind="explicit", values={"male": 0.8, "female": 0.2})
    write_manifest_adapter(root, "skewed", target=skewed)
    registry = await _registry(root)

    routed = _route(registry, tmp_path, mode="calibrated")
    assert (routed.spec.adapter.name, routed.spec.adapter.version) == ("new", 2)
    # uniform and the explicit 50/50 map are the same target
    routed = _route(registry, tmp_path, mode="calibrated", target={"male": 0.5, "female": 0.5})
    assert routed.spec.adapter.name == "new"
    routed = _route(registry, tmp_path, mode="calibrated", target={"male": 0.8, "female": 0.2})
    assert routed.spec.adapter.name == "skewed"
    routed = _route(registry, tmp_path, mode="calibrated", task="story")
    assert routed.spec.adapter.name == "story"
    with pytest.raises(DistctlError, match="target real_world") as caught:
        _route(registry, tmp_path, mode="calibrated", target="real_world")
    assert caught.value.field == "adapter"


async def test_calibrated_real_world_matches_the_country(tmp_path: Path):
    root = tmp_path / "adapters"
    per = [
        OccupationTarget(
            country="uk", occupation="Civil engineers", target={"male": 0.1, "female": 0.9}
        )
    ]
    write_manifest_adapter(
        root, "uk-real", target=TargetRecord(kind="real_world", per_occupation=per), country="uk"
    )
    registry = await _registry(root)
    with pytest.raises(DistctlError, match=r"real_world \(us\)"):
        _route(registry, tmp_path, mode="calibrated", target="real_world")
    routed = _route(
        registry,
        tmp_path,
        mode="calibrated",
        target="real_world",
        country="uk",
        occupation="Civil engineers",
    )
    assert routed.spec.adapter.name == "uk-real"


async def test_sampled_and_exact_use_any_steering_adapter_of_the_attribute(tmp_path: Path):
    root = tmp_path / "adapters"
    skewed = TargetRecord(kind="explicit", values={"male": 0.8, "female": 0.2})
    write_manifest_adapter(root, "skewed", target=skewed)
    write_manifest_adapter(root, "ift", method="ift")
    registry = await _registry(root)
    for mode in ("sampled", "exact"):
        assert _route(registry, tmp_path, mode=mode).spec.adapter.name == "skewed"
    assert _route(registry, tmp_path, mode="sampled", attribute="sentiment").spec.adapter is None
    assert _route(registry, tmp_path, mode="plain").spec.adapter is None
    # a named adapter wins, even a baseline one
    assert _route(registry, tmp_path, mode="plain", adapter="ift").spec.adapter.name == "ift"


async def test_named_adapter_must_fit_the_request(tmp_path: Path):
    root = tmp_path / "adapters"
    write_manifest_adapter(root, "race", attribute="race")
    registry = await _registry(root)
    with pytest.raises(DistctlError, match="race, not gender") as caught:
        _route(registry, tmp_path, adapter="race")
    assert caught.value.field == "adapter"
    await registry.unload("race")
    with pytest.raises(DistctlError, match="not loaded"):
        _route(registry, tmp_path, adapter="race")


async def test_a_route_leases_its_adapter(tmp_path: Path):
    root = tmp_path / "adapters"
    write_manifest_adapter(root, "g")
    registry = await _registry(root)
    routed = _route(registry, tmp_path)
    assert registry.get("g").users == 1
    await routed.lease.release()
    await routed.lease.release()  # once only
    assert registry.get("g").users == 0
