"""A validated request -> the generation spec it asks for, and the adapter that serves it.

Adapter choice (the README repeats it for clients):
- an `adapter` named in the request wins (it must be loaded, and trained for the request's
  attribute and task);
- `calibrated`: the newest loaded steering adapter (method ours*) whose attribute, task and
  target match the request (for real_world also the country; an explicit map matches an
  adapter trained on the same map, so uniform and {male: 0.5, female: 0.5} match each other),
  else a 422 naming what is missing;
- `sampled` and `exact`: the newest loaded steering adapter for the attribute and task (the
  digit carries the planned class), else the base model with the class-conditioned
  instruction;
- `plain`: the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

from distctl.attributes import Attribute, get_attribute
from distctl.errors import DistctlError
from distctl.generation import GenerationSpec, Generator, Mode
from distctl.manifest import Manifest
from distctl.occupations import Occupation, get_occupation
from distctl.prompts import canonical_prompt
from distctl.targets import Target, resolve_target, same_target, target_kind, uniform
from service.registry import AdapterRegistry, Lease, Loaded
from service.schemas import GenerateRequest
from service.settings import ServiceSettings

# Room for what pass 2 adds to the user's prompt: the steering digit, or the
# class-conditioned instruction (a dozen tokens) on the base model.
PASS2_MARGIN_TOKENS = 32


@dataclass
class Route:
    spec: GenerationSpec
    lease: Lease | None


def _occupation(req: GenerateRequest) -> Occupation | None:
    if req.prompt is not None and (req.occupation is not None or req.country is not None):
        raise DistctlError(
            "give either a prompt, or an occupation and a country, not both", field="prompt"
        )
    if req.prompt is not None:
        return None
    if req.occupation is None:
        raise DistctlError("give an occupation and a country, or a prompt", field="occupation")
    if req.country is None:
        raise DistctlError("an occupation needs a country", field="country")
    return get_occupation(req.country, req.occupation)


def serves_target(
    manifest: Manifest, attribute: Attribute, kind: str, target: Target, country: str | None
) -> bool:
    """Whether an adapter was trained on the target that a request asks for."""
    record = manifest.target
    if kind == "real_world":
        return record.kind == "real_world" and (
            manifest.country == country or any(o.country == country for o in record.per_occupation)
        )
    if record.values is not None:
        return same_target(record.values, target)
    return record.kind == "uniform" and same_target(uniform(attribute), target)


def _newest(entries: list[Loaded]) -> Loaded | None:
    return max(
        entries,
        key=lambda e: (e.adapter.version, e.manifest.created_at, e.adapter.name),
        default=None,
    )


def _named(registry: AdapterRegistry, name: str, attribute: Attribute, task: str) -> Loaded:
    entry = registry.get(name)
    if entry is None:
        if any(v.name == name for v in registry.on_disk()):
            raise DistctlError(
                f"adapter {name!r} is not loaded; load it with POST /adapters", field="adapter"
            )
        raise DistctlError(f"unknown adapter {name!r}", field="adapter")
    if entry.adapter.attribute != attribute.name:
        raise DistctlError(
            f"adapter {name!r} was trained for {entry.adapter.attribute}, not {attribute.name}",
            field="adapter",
        )
    if entry.adapter.task != task:
        raise DistctlError(
            f"adapter {name!r} was trained for task {entry.adapter.task}, not {task}",
            field="adapter",
        )
    return entry


def choose_adapter(
    req: GenerateRequest,
    registry: AdapterRegistry,
    attribute: Attribute,
    target: Target,
) -> Loaded | None:
    if req.adapter is not None:
        return _named(registry, req.adapter, attribute, req.task)
    if req.mode is Mode.PLAIN:
        return None
    steering = [
        e
        for e in registry.loaded()
        if e.adapter.steering
        and e.adapter.attribute == attribute.name
        and e.adapter.task == req.task
    ]
    if req.mode is not Mode.CALIBRATED:
        return _newest(steering)
    kind = target_kind(req.target)
    found = _newest(
        [e for e in steering if serves_target(e.manifest, attribute, kind, target, req.country)]
    )
    if found is None:
        wanted = f"attribute {attribute.name}, task {req.task}, target {_describe(req, target)}"
        raise DistctlError(
            f"calibrated mode needs a steering adapter trained for {wanted}, and none is "
            "loaded; train one (distctl train), name one with `adapter`, or use mode sampled "
            "or exact",
            field="adapter",
        )
    return found


def _describe(req: GenerateRequest, target: Target) -> str:
    kind = target_kind(req.target)
    if kind == "real_world":
        return f"real_world ({req.country})"
    if kind == "uniform":
        return "uniform"
    return "{" + ", ".join(f"{c}: {p:g}" for c, p in target.items()) + "}"


def route(
    req: GenerateRequest,
    registry: AdapterRegistry,
    generator: Generator,
    settings: ServiceSettings,
) -> Route:
    """Resolve a request into a spec and take a lease on its adapter (release it when the
    request ends). Raises DistctlError naming the field at fault; takes nothing then."""
    if req.n > settings.max_n:
        raise DistctlError(f"n must be at most {settings.max_n} (DISTCTL_MAX_N)", field="n")
    if req.retries and req.mode not in (Mode.SAMPLED, Mode.EXACT):
        raise DistctlError("retries apply to modes sampled and exact only", field="retries")
    attribute = get_attribute(req.attribute)
    occupation = _occupation(req)
    target = resolve_target(attribute, req.target, occupation=occupation, country=req.country)
    prompt = (
        canonical_prompt(req.task, attribute, occupation) if occupation is not None else req.prompt
    )
    assert prompt is not None
    entry = choose_adapter(req, registry, attribute, target)
    options = {
        key: value
        for key, value in (("temperature", req.temperature), ("top_p", req.top_p))
        if value is not None
    }
    spec = GenerationSpec(
        prompt=prompt,
        attribute=attribute,
        target=target,
        n=req.n,
        mode=req.mode,
        task=req.task,
        adapter=entry.adapter if entry is not None else None,
        seed=req.seed,
        max_tokens=req.max_tokens,
        retries=req.retries,
        **options,
    )
    budget = len(generator.chat_ids(prompt)) + PASS2_MARGIN_TOKENS + spec.token_budget
    if budget > settings.max_model_len:
        raise DistctlError(
            f"prompt and max_tokens need about {budget} tokens, more than the model's "
            f"{settings.max_model_len} (DISTCTL_MAX_MODEL_LEN)",
            field="prompt" if req.prompt is not None else "max_tokens",
        )
    return Route(spec, registry.lease(entry) if entry is not None else None)
