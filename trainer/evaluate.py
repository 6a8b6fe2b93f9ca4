"""`distctl eval`: multi-round distribution alignment of one method, the paper's way.

Each (country, occupation) gets `--rounds` generations spread evenly over its evaluation
paraphrases (or `--rounds` per row of a `--prompts` file); every generation goes through the
generation core and is scored with the shared tally (trainer/report.py).

`evaluate(generator, config)` is the core and runs on an existing Generator (the eval-all grid
and the integration tests share one engine); `main(argv)` builds the engine for one command.
`main_all(argv)` (`distctl eval-all`) lives in trainer/grid.py and is re-exported here for the
command line.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distctl.attributes import Attribute, check_task, get_attribute
from distctl.datasets import DATASETS, get_dataset
from distctl.errors import DistctlError
from distctl.manifest import AdapterVersion, append_eval, read_manifest
from distctl.prompts import load_prompt_file, paraphrases, prompt_engineering, render
from distctl.targets import Target
from trainer.report import score, write_report

if TYPE_CHECKING:
    from distctl.generation import Generator, LoraAdapter

METHODS = ("zero-shot", "prompt", "ift", "dpo", "ours", "ours-kl", "ours-kto")
BASE_METHODS = ("zero-shot", "prompt")  # the base model, no adapter
STEERING = ("ours", "ours-kl", "ours-kto")
MODES = ("calibrated", "sampled", "exact", "plain")
PASS2 = ("assistant", "user-turn")
# Per-spec seeds are spread over a range this wide: the core seeds sample i with seed + i (and
# retries further on), so seeds drawn at random from a 2**48 range never overlap in practice.
_SEED_RANGE = 1 << 48


@dataclass(frozen=True)
class EvalItem:
    """One prompt of the evaluation with its share of the rounds."""

    prompt: str  # as sent (prompt engineering already applied)
    target: Target
    n: int
    occupation: str | None
    country: str | None


@dataclass(frozen=True)
class EvalConfig:
    dataset: str  # a dataset name, or the --prompts file's name
    method: str
    items: tuple[EvalItem, ...]
    attribute: str
    task: str = "attribute"
    mode: str = "plain"
    pass2: str = "assistant"
    rounds: int = 100
    seed: int = 0
    adapter: AdapterVersion | None = None
    max_tokens: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "task": self.task,
            "method": self.method,
            "mode": self.mode,
            "pass2": self.pass2,
            "attribute": self.attribute,
            "rounds": self.rounds,
            "seed": self.seed,
            "adapter": (f"{self.adapter.name}@v{self.adapter.version}" if self.adapter else None),
            "adapter_path": str(self.adapter.path) if self.adapter else None,
        }


@dataclass
class EvalResult:
    config: EvalConfig
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    wall_s: float
    digit_distributions: list[dict[str, float] | None] = field(default_factory=list)


def default_mode(method: str) -> str:
    return "calibrated" if method in STEERING else "plain"


def spread(rounds: int, parts: int) -> list[int]:
    """`rounds` split as evenly as possible over `parts` (the first ones take the remainder)."""
    return [rounds // parts + (i < rounds % parts) for i in range(parts)]


def spec_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`: deterministic in (seed, index), far from its neighbours'."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]) % _SEED_RANGE


def _stated(method: str, prompt: str, attribute: Attribute, target: Target) -> str:
    return prompt_engineering(prompt, attribute, target) if method == "prompt" else prompt


def dataset_items(
    dataset: str,
    task: str,
    method: str,
    rounds: int,
    occupations: Sequence[str] | None = None,
    limit_occupations: int | None = None,
) -> list[EvalItem]:
    spec = get_dataset(dataset)
    attribute = get_attribute(spec.attribute)
    templates = paraphrases(task, attribute, "eval")
    chosen = spec.occupations()
    if occupations:
        wanted = {o.strip().lower() for o in occupations}
        chosen = [o for o in chosen if o.title.lower() in wanted]
        unknown = wanted - {o.title.lower() for o in chosen}
        if unknown:
            raise DistctlError(
                f"unknown {spec.country} occupations: {', '.join(sorted(unknown))}",
                field="occupations",
            )
    if limit_occupations is not None:
        chosen = chosen[:limit_occupations]
    items = []
    for occ in chosen:
        target = spec.target_for(occ)
        for template, n in zip(templates, spread(rounds, len(templates)), strict=True):
            if n:
                prompt = _stated(method, render(template, occ), attribute, target)
                items.append(EvalItem(prompt, target, n, occ.title, occ.country))
    return items


def prompt_file_items(path: Path, method: str, rounds: int) -> tuple[list[EvalItem], str, str]:
    """Items from a JSONL file of prompt rows; returns (items, attribute, task)."""
    rows, attribute_name, task = load_prompt_file(path)
    attribute = get_attribute(attribute_name)
    items = []
    for number, row in enumerate(rows, start=1):
        target = row.resolved_target()
        # A row without an occupation is its own group, so rows with different targets never
        # share a tally.
        occupation = row.occupation or f"row {number}"
        prompt = _stated(method, row.prompt, attribute, target)
        items.append(EvalItem(prompt, target, rounds, occupation, row.country))
    return items, attribute.name, task


def make_config(
    *,
    method: str,
    dataset: str | None = None,
    prompts: Path | None = None,
    adapter: Path | AdapterVersion | None = None,
    task: str | None = None,
    rounds: int = 100,
    mode: str | None = None,
    pass2: str = "assistant",
    seed: int = 0,
    occupations: Sequence[str] | None = None,
    limit_occupations: int | None = None,
    max_tokens: int | None = None,
) -> EvalConfig:
    """Validate the options of one evaluation and lay out its prompts."""
    if method not in METHODS:
        raise DistctlError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}", "method")
    if (dataset is None) == (prompts is None):
        raise DistctlError("give exactly one of --dataset and --prompts", field="dataset")
    if rounds < 1:
        raise DistctlError(f"--rounds must be at least 1, got {rounds}", field="rounds")
    mode = mode or default_mode(method)
    if mode not in MODES:
        raise DistctlError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}", field="mode")
    if pass2 not in PASS2:
        raise DistctlError(f"unknown pass 2 {pass2!r}; allowed: {', '.join(PASS2)}", "pass2")
    version = _adapter(method, adapter)
    if mode == "calibrated" and method not in STEERING:
        raise DistctlError(
            f"calibrated mode needs a steering adapter (ours, ours-kl, ours-kto), not {method}",
            field="mode",
        )
    if prompts is not None:
        items, attribute, file_task = prompt_file_items(Path(prompts), method, rounds)
        if task is not None and task != file_task:
            raise DistctlError(f"--task {task} but the prompt rows are {file_task}", "task")
        task, name = file_task, Path(prompts).name
    else:
        assert dataset is not None
        task = check_task(task or "attribute")
        attribute = get_dataset(dataset).attribute
        items = dataset_items(dataset, task, method, rounds, occupations, limit_occupations)
        name = dataset
    if not items:
        raise DistctlError("no prompts to evaluate", field="occupations")
    if version is not None:
        m = version.manifest
        if m.attribute != attribute or m.task != task:
            raise DistctlError(
                f"adapter {version.name} v{version.version} was trained for {m.attribute} / "
                f"{m.task}, not {attribute} / {task}",
                field="adapter",
            )
    return EvalConfig(
        dataset=name,
        method=method,
        items=tuple(items),
        attribute=attribute,
        task=task,
        mode=mode,
        pass2=pass2,
        rounds=rounds,
        seed=seed,
        adapter=version,
        max_tokens=max_tokens,
    )


def _adapter(method: str, adapter: Path | AdapterVersion | None) -> AdapterVersion | None:
    if method in BASE_METHODS:
        if adapter is not None:
            raise DistctlError(f"method {method} runs the base model; drop --adapter", "adapter")
        return None
    if adapter is None:
        raise DistctlError(f"method {method} needs --adapter DIR (an adapter version)", "adapter")
    if isinstance(adapter, AdapterVersion):
        version = adapter
    else:
        folder = Path(adapter)
        manifest = read_manifest(folder)
        version = AdapterVersion(manifest.name, manifest.version, folder, manifest)
    if version.manifest.method != method:
        raise DistctlError(
            f"adapter {version.name} v{version.version} was trained with method "
            f"{version.manifest.method}, not {method}",
            field="adapter",
        )
    return version


async def evaluate(
    generator: Generator,
    config: EvalConfig,
    *,
    lora: LoraAdapter | None = None,
    progress: bool = True,
) -> EvalResult:
    """Generate every round of `config` on `generator` and score it.

    All prompts run concurrently so the engine batches them. `lora` is the adapter as the
    engine knows it; by default the config's adapter with a fresh lora id.
    """
    from tqdm.auto import tqdm

    from distctl.generation import GenerationSpec, LoraAdapter, Mode

    if lora is None and config.adapter is not None:
        lora = LoraAdapter.from_version(config.adapter)
    attribute = get_attribute(config.attribute)
    specs = [
        GenerationSpec(
            prompt=item.prompt,
            attribute=attribute,
            target=item.target,
            n=item.n,
            mode=Mode(config.mode),
            task=config.task,
            adapter=lora,
            seed=spec_seed(config.seed, i),
            temperature=1.0,
            max_tokens=config.max_tokens,
            pass2=config.pass2,  # type: ignore[arg-type]
        )
        for i, item in enumerate(config.items)
    ]
    bar = tqdm(
        total=sum(s.n for s in specs),
        desc=f"{config.method} {config.dataset}",
        unit="gen",
        disable=not progress,
    )
    adapter_label = lora.label if lora else None
    started = time.perf_counter()

    async def one(item: EvalItem, spec: GenerationSpec) -> tuple[list[dict], Target | None]:
        run = generator.run(spec)
        rows = []
        try:
            async for g in run:
                rows.append(_row(config, item, adapter_label, g))
                bar.update()
        finally:
            await run.aclose()
        # in index order, so the file does not depend on finishing order
        rows.sort(key=lambda r: r["_index"])
        for r in rows:
            del r["_index"]
        return rows, run.digit_distribution

    try:
        done = await asyncio.gather(*(one(i, s) for i, s in zip(config.items, specs, strict=True)))
    finally:
        bar.close()
    wall = time.perf_counter() - started
    rows = [r for item_rows, _ in done for r in item_rows]
    report = score(rows, seed=config.seed)
    report["config"] = config.describe()
    report["wall_s"] = wall
    return EvalResult(config, rows, report, wall, [d for _, d in done])


def _row(config: EvalConfig, item: EvalItem, adapter: str | None, g: Any) -> dict[str, Any]:
    return {
        "_index": g.index,
        "dataset": config.dataset,
        "task": config.task,
        "method": config.method,
        "mode": config.mode,
        "adapter": adapter,
        "prompt": item.prompt,
        "occupation": item.occupation,
        "country": item.country,
        "attribute": config.attribute,
        "target": item.target,
        "assigned": g.assigned,
        "extracted": g.extracted,
        "text": g.text,
        "seed": g.seed,
    }


def _digit_summary(result: EvalResult) -> list[dict[str, Any]]:
    """Pass 1's digit distribution per prompt (calibrated mode): what the adapter itself drew
    from, beside the shares its texts reached."""
    return [
        {
            "occupation": item.occupation,
            "country": item.country,
            "prompt": item.prompt,
            "digit_distribution": dist,
        }
        for item, dist in zip(result.config.items, result.digit_distributions, strict=True)
        if dist is not None
    ]


def save(result: EvalResult, out: Path, *, plots: bool = True) -> None:
    """Write --out, and append the overall result to the adapter's manifest."""
    digits = _digit_summary(result)
    if digits:
        result.report["digit_distributions"] = digits
    write_report(Path(out), result.rows, result.report, plots=plots)
    adapter = result.config.adapter
    if adapter is not None:
        overall = result.report["overall"]
        append_eval(
            adapter.path,
            {
                "dataset": result.config.dataset,
                "task": result.config.task,
                "mode": result.config.mode,
                "pass2": result.config.pass2,
                "n": result.config.rounds,
                "mae": overall["mae"],
                "mae_ci": overall["mae_ci"],
            },
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distctl eval",
        description="Evaluate a method over many rounds per occupation: MAE (bootstrap 95%% CI), "
        "KL, TVD, invalid rate and steering consistency against the target, beside the iid "
        "noise floor.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=list(DATASETS), help="one of the six datasets")
    src.add_argument("--prompts", type=Path, help="JSONL file of prompt rows (DESIGN.md)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument(
        "--adapter",
        type=Path,
        help="adapter version folder (holds distctl.json); needed by ift, dpo and ours*",
    )
    p.add_argument("--task", choices=("attribute", "story"), help="default attribute")
    p.add_argument(
        "--rounds",
        type=int,
        default=100,
        help="generations per occupation (per row with --prompts); default 100",
    )
    p.add_argument(
        "--mode", choices=MODES, help="default calibrated for ours*, plain for the baselines"
    )
    p.add_argument(
        "--pass2",
        choices=PASS2,
        default="assistant",
        help="user-turn: the paper's script's variant (digit in the user turn)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--occupations", help="comma-separated occupation titles to keep")
    p.add_argument(
        "--limit-occupations",
        type=int,
        metavar="N",
        help="keep the first N occupations (quick runs)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        help="token budget per generation; default 8 (attribute), 160 (story)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return make_config(
        method=args.method,
        dataset=args.dataset,
        prompts=args.prompts,
        adapter=args.adapter,
        task=args.task,
        rounds=args.rounds,
        mode=args.mode,
        pass2=args.pass2,
        seed=args.seed,
        occupations=args.occupations.split(",") if args.occupations else None,
        limit_occupations=args.limit_occupations,
        max_tokens=args.max_tokens,
    )


async def _run_with_engine(config: EvalConfig, out: Path, plots: bool) -> EvalResult:
    from distctl.config import Settings
    from distctl.engine import build_engine, load_tokenizer
    from distctl.generation import Generator

    settings = Settings()
    engine = build_engine(settings)
    try:
        result = await evaluate(Generator(engine, load_tokenizer(settings)), config)
    finally:
        engine.shutdown()
    save(result, out, plots=plots)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = config_from_args(args)  # bad options fail before the engine starts
    result = asyncio.run(_run_with_engine(config, args.out, not args.no_plots))
    o = result.report["overall"]
    print(
        f"{config.method} on {config.dataset}: MAE {o['mae']:.3f} "
        f"[{o['mae_ci'][0]:.3f}, {o['mae_ci'][1]:.3f}] (noise floor {o['noise_floor']:.3f}), "
        f"KL {o['kl'] if o['kl'] is None else round(o['kl'], 3)}, "
        f"invalid {o['invalid_rate']:.2f}; {o['n']} generations in {result.wall_s:.0f} s "
        f"-> {args.out}"
    )
    return 0


def main_all(argv: Sequence[str] | None = None) -> int:
    from trainer.grid import main_all as grid_main

    return grid_main(argv)
