"""`distctl eval-all`: the evaluation grid of issue 4, resumable.

Each cell (dataset x task x method x mode x pass 2 x N) keeps its state in
`$DISTCTL_HOME/eval-all/<cell>/`: `report.json` (written last, atomically: its presence means
the cell is done, so a second run skips it), `generations.jsonl` and `state.json` (wall times).
Adapters the grid lacks are trained first, by the trainer's own entry point, into the adapter
root; then one engine evaluates every pending cell, loading each cell's adapter by LoRARequest.
The combined report (results.json, results.md, plots) is rebuilt from the state of the whole
grid after every run: a cell without a measurement is named missing, never filled.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distctl.config import Settings
from distctl.datasets import DATASETS
from distctl.errors import DistctlError
from distctl.manifest import AdapterVersion, latest_version
from trainer.report import (
    plot_results,
    render_results_md,
    result_row,
    write_json,
)

ALL_DATASETS = tuple(DATASETS)
# The extended grid's ablations and the story task run on these (issue 4).
ABLATION_DATASETS = ("gender-us-real", "gender-uk-uniform")
STORY_DATASETS = ("gender-us-real", "sentiment-us-uniform")
# The real-world dataset whose per-occupation shares the combined report plots.
SHARES_DATASET = "gender-us-real"
PARTS = ("core", "extended")


@dataclass(frozen=True)
class Cell:
    dataset: str
    task: str
    method: str
    mode: str
    pass2: str
    n_rounds: int
    part: str  # core or extended

    @property
    def id(self) -> str:
        return "__".join(
            (self.dataset, self.task, self.method, self.mode, self.pass2, f"n{self.n_rounds}")
        )

    @property
    def adapter_name(self) -> str | None:
        """The adapter this cell evaluates (shared by the cells of one dataset, task, method);
        None for the base-model methods."""
        if self.method in ("zero-shot", "prompt"):
            return None
        return f"{self.dataset}-{self.task}-{self.method}"

    def ident(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "part"}


def core_cells(rounds: int = 100) -> list[Cell]:
    methods = [
        ("zero-shot", "plain"),
        ("prompt", "plain"),
        ("ift", "plain"),
        ("ours", "calibrated"),
        ("ours", "exact"),
    ]
    return [
        Cell(d, "attribute", m, mode, "assistant", rounds, "core")
        for d in ALL_DATASETS
        for m, mode in methods
    ]


def extended_cells(rounds: int = 100, story_rounds: int = 30) -> list[Cell]:
    cells = [
        Cell(d, "attribute", "dpo", "plain", "assistant", rounds, "extended") for d in ALL_DATASETS
    ]
    for d in ABLATION_DATASETS:
        cells += [
            Cell(d, "attribute", "ours-kl", "calibrated", "assistant", rounds, "extended"),
            Cell(d, "attribute", "ours-kto", "calibrated", "assistant", rounds, "extended"),
            Cell(d, "attribute", "ours", "calibrated", "user-turn", rounds, "extended"),
        ]
    for d in STORY_DATASETS:
        cells += [
            Cell(d, "story", m, mode, "assistant", story_rounds, "extended")
            for m, mode in (("zero-shot", "plain"), ("prompt", "plain"), ("ours", "calibrated"))
        ]
    return cells


def grid(rounds: int = 100, story_rounds: int = 30) -> list[Cell]:
    return core_cells(rounds) + extended_cells(rounds, story_rounds)


def select(
    cells: Sequence[Cell],
    only: str | None = None,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> list[Cell]:
    if only is not None and only.lower() not in PARTS:
        raise DistctlError(f"--only must be core or extended, not {only!r}", field="only")
    for name, wanted, known in (
        ("dataset", datasets, ALL_DATASETS),
        ("method", methods, {c.method for c in cells}),
        ("task", tasks, {c.task for c in cells}),
    ):
        unknown = set(wanted or ()) - set(known)
        if unknown:
            raise DistctlError(f"unknown {name}s: {', '.join(sorted(unknown))}", field=name)
    return [
        c
        for c in cells
        if (only is None or c.part == only.lower())
        and (not datasets or c.dataset in datasets)
        and (not methods or c.method in methods)
        and (not tasks or c.task in tasks)
    ]


def state_root(settings: Settings) -> Path:
    return settings.home / "eval-all"


def cell_dir(settings: Settings, cell: Cell) -> Path:
    return state_root(settings) / cell.id


def is_done(settings: Settings, cell: Cell) -> bool:
    return (cell_dir(settings, cell) / "report.json").is_file()


def load_report(settings: Settings, cell: Cell) -> dict[str, Any] | None:
    import json

    path = cell_dir(settings, cell) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_args(cell: Cell) -> list[str]:
    """`distctl train` arguments for the adapter a cell needs (the trainer's defaults)."""
    assert cell.adapter_name is not None
    return [
        "--dataset",
        cell.dataset,
        "--task",
        cell.task,
        "--method",
        cell.method,
        "--name",
        cell.adapter_name,
    ]


def ensure_adapter(settings: Settings, cell: Cell, train: bool) -> tuple[AdapterVersion, float]:
    """The newest version of the cell's adapter, trained first when missing; returns it and
    the training wall time (0 when it already existed)."""
    assert cell.adapter_name is not None
    found = latest_version(settings.adapters_path, cell.adapter_name)
    if found is not None:
        return found, 0.0
    if not train:
        raise DistctlError(f"adapter {cell.adapter_name} is missing (--no-train)")
    from trainer.train import main as train_main

    started = time.perf_counter()
    rc = train_main(train_args(cell))
    wall = time.perf_counter() - started
    found = latest_version(settings.adapters_path, cell.adapter_name)
    if rc not in (0, None) or found is None:
        raise DistctlError(f"training {cell.adapter_name} failed (exit {rc})")
    return found, wall


def _record_failure(settings: Settings, cell: Cell, stage: str, exc: BaseException) -> None:
    folder = cell_dir(settings, cell)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / "error.json",
        {
            "cell": cell.ident(),
            "stage": stage,
            "error": str(exc),
            "traceback": traceback.format_exception(exc),
            "at": datetime.now(UTC).isoformat(),
        },
    )


async def run_cells(
    settings: Settings,
    cells: Sequence[Cell],
    adapters: dict[str, tuple[AdapterVersion, float]],
    generator: Any,
    *,
    progress: bool = True,
) -> list[Cell]:
    """Evaluate the pending cells on one generator; returns the cells that failed."""
    from tqdm.auto import tqdm

    from distctl.generation import LoraAdapter
    from trainer.evaluate import evaluate, make_config, save

    loras: dict[str, LoraAdapter] = {}
    failed = []
    for cell in tqdm(cells, desc="eval-all", unit="cell", disable=not progress):
        try:
            version = adapters[cell.adapter_name][0] if cell.adapter_name else None
            config = make_config(
                method=cell.method,
                dataset=cell.dataset,
                adapter=version,
                task=cell.task,
                rounds=cell.n_rounds,
                mode=cell.mode,
                pass2=cell.pass2,
            )
            lora = None
            if version is not None:
                # one lora id per adapter version for the engine's whole life
                if str(version.path) not in loras:
                    loras[str(version.path)] = LoraAdapter.from_version(version)
                lora = loras[str(version.path)]
            result = await evaluate(generator, config, lora=lora, progress=progress)
            folder = cell_dir(settings, cell)
            state = {
                "cell": cell.ident(),
                "adapter": str(version.path) if version else None,
                "adapter_train_s": adapters[cell.adapter_name][1] if cell.adapter_name else None,
                "generation_s": result.wall_s,
                "finished_at": datetime.now(UTC).isoformat(),
            }
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "state.json", state)
            (folder / "error.json").unlink(missing_ok=True)
            # report.json is written last by save(): the cell counts as done only when complete
            save(result, folder, plots=False)
        except Exception as exc:
            _record_failure(settings, cell, "evaluate", exc)
            failed.append(cell)
    return failed


def write_results(settings: Settings, cells: Sequence[Cell], out: Path) -> list[dict[str, Any]]:
    """results.json, results.md, plots and the per-cell reports, from the grid's state."""
    out.mkdir(parents=True, exist_ok=True)
    rows, shares = [], {}
    for cell in cells:
        report = load_report(settings, cell)
        if report is None:
            continue
        rows.append(result_row(cell.ident(), report))
        state_file = cell_dir(settings, cell) / "state.json"
        cell_out = out / "cells" / cell.id
        cell_out.mkdir(parents=True, exist_ok=True)
        write_json(cell_out / "report.json", report)
        if state_file.is_file():
            shutil.copyfile(state_file, cell_out / "state.json")
        if (cell.dataset, cell.task, cell.pass2) == (SHARES_DATASET, "attribute", "assistant"):
            label = cell.method + (f" ({cell.mode})" if cell.mode != "plain" else "")
            shares[label] = report
    write_json(out / "results.json", rows)
    times = _timing(settings, cells)
    plots = plot_results(rows, out, shares or None)
    header = "\n".join(
        [
            "Made by `distctl eval-all` (see docs/evaluation.md for the command and the machine).",
            "",
            f"Generation wall time of the measured cells: {times['generation_s']:.0f} s; "
            f"adapter training counted separately: {times['train_s']:.0f} s.",
            "",
            *[f"![{p}]({p})" for p in plots],
        ]
    )
    (out / "results.md").write_text(
        render_results_md([c.ident() for c in cells], rows, header=header)
    )
    return rows


def _timing(settings: Settings, cells: Sequence[Cell]) -> dict[str, float]:
    import json

    gen = 0.0
    train: dict[str, float] = {}  # per adapter: cells that share one count its training once
    for cell in cells:
        path = cell_dir(settings, cell) / "state.json"
        if path.is_file():
            state = json.loads(path.read_text())
            gen += state.get("generation_s") or 0.0
            if state.get("adapter"):
                train[state["adapter"]] = state.get("adapter_train_s") or 0.0
    return {"generation_s": gen, "train_s": sum(train.values())}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distctl eval-all",
        description="Run the evaluation grid (core: six datasets x zero-shot, prompt, ift, "
        "ours calibrated, ours exact; extended: dpo, ablations, pass-2 variant, story task), "
        "training missing adapters; resumable (state under $DISTCTL_HOME/eval-all).",
    )
    p.add_argument("--rounds", type=int, default=100, help="N per occupation, attribute task")
    p.add_argument("--story-rounds", type=int, default=30, help="N per occupation, story task")
    p.add_argument("--only", type=str.lower, choices=PARTS, help="core or extended")
    p.add_argument("--datasets", help="comma-separated datasets to run (default all)")
    p.add_argument("--methods", help="comma-separated methods to run (default all)")
    p.add_argument("--tasks", help="comma-separated tasks to run: attribute, story (default both)")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="skip cells whose adapter is missing instead of training it",
    )
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    return p


def main_all(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    full = grid(args.rounds, args.story_rounds)
    chosen = select(
        full,
        args.only,
        args.datasets.split(",") if args.datasets else None,
        args.methods.split(",") if args.methods else None,
        args.tasks.split(",") if args.tasks else None,
    )
    pending = [c for c in chosen if not is_done(settings, c)]
    print(
        f"eval-all: {len(chosen)} cells selected, {len(chosen) - len(pending)} already done, "
        f"{len(pending)} to run"
    )

    # Training before the engine starts: the two would compete for the same cores and memory.
    adapters: dict[str, tuple[AdapterVersion, float]] = {}
    runnable, failed = [], []
    for cell in pending:
        name = cell.adapter_name
        try:
            if name is not None and name not in adapters:
                adapters[name] = ensure_adapter(settings, cell, train=not args.no_train)
            runnable.append(cell)
        except Exception as exc:
            _record_failure(settings, cell, "train", exc)
            failed.append(cell)
            print(f"eval-all: {cell.id}: {exc}")

    if runnable:
        failed += asyncio.run(_run_with_engine(settings, runnable, adapters))
    rows = write_results(settings, full, args.out)
    print(
        f"eval-all: {len(rows)} of {len(full)} cells measured -> {args.out}/results.md"
        + (f"; {len(failed)} failed (error.json in their state folders)" if failed else "")
    )
    return 1 if failed else 0


async def _run_with_engine(
    settings: Settings, cells: Sequence[Cell], adapters: dict[str, tuple[AdapterVersion, float]]
) -> list[Cell]:
    from distctl.engine import build_engine, load_tokenizer
    from distctl.generation import Generator

    engine = build_engine(settings)
    try:
        return await run_cells(
            settings, cells, adapters, Generator(engine, load_tokenizer(settings))
        )
    finally:
        engine.shutdown()
