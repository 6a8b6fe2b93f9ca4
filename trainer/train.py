"""`distctl train`: one LoRA adapter for a dataset (or a prompt file) and its target.

Checkpoints live in `$DISTCTL_HOME/runs/<run-id>/`, where the run id is a digest of everything
that determines the result (method, task, data, hyperparameters, base model, destination): the
same command after an interruption resumes from the last checkpoint; `--fresh` starts over. The
folder is removed once the adapter is written (`--keep-checkpoint` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from distctl.attributes import Attribute, check_task, get_attribute
from distctl.basemodel import require_model, weights_sha256
from distctl.config import Settings
from distctl.datasets import DATASETS, get_dataset
from distctl.errors import DistctlError
from distctl.manifest import Manifest, OccupationTarget, TargetRecord
from distctl.prompts import paraphrases, render
from distctl.targets import Target, same_target, target_kind
from trainer import datasets as ds
from trainer import parallel
from trainer.baselines import run_dpo
from trainer.export import export, package_versions
from trainer.hparams import HParams, add_flags, from_args
from trainer.hybrid import run_hybrid
from trainer.sft import Runtime, default_device, forward, run_sft

METHODS = ("ours", "ours-kl", "ours-kto", "ift", "dpo")
STEERING = ("ours", "ours-kl", "ours-kto")
# --search N tries the first N learning-rate scales (applied to lr and stage2_lr alike), the
# same N and the same step budget for every method, so the comparison stays fair
SEARCH_SCALES = (1.0, 0.5, 2.0, 0.25, 4.0)


@dataclass(frozen=True)
class Job:
    """What one run trains on, resolved from the command line."""

    dataset: str  # a dataset name, or "custom:<file name>"
    attribute: Attribute
    task: str
    country: str | None
    sources: list[ds.PromptSource]
    target: TargetRecord
    method: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distctl train",
        description="Train one LoRA adapter whose samples follow a target distribution.",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", help="one of the six datasets (e.g. gender-us-uniform)")
    data.add_argument("--prompts", type=Path, help="JSONL file of prompt rows (custom data)")
    parser.add_argument("--method", choices=METHODS, default="ours")
    parser.add_argument(
        "--task",
        choices=("attribute", "story"),
        default=None,
        help="default: attribute, or the rows' task for --prompts",
    )
    dest = parser.add_mutually_exclusive_group(required=True)
    dest.add_argument("--name", help="write the next version under the adapter root")
    dest.add_argument("--out", type=Path, help="write exactly this folder")
    parser.add_argument("--config", type=Path, help="YAML file of hyperparameters")
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="N",
        help="try N learning-rate scales on a validation split of the training "
        "paraphrases and train with the best (attribute task)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--keep-checkpoint", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(parser)
    return parser


def _target_record(sources: Sequence[ds.PromptSource], kind: str) -> TargetRecord:
    per_occupation: dict[tuple[str, str], Target] = {}
    for s in sources:
        if s.occupation is not None and s.country is not None:
            per_occupation.setdefault((s.country, s.occupation), s.target)
    first = sources[0].target
    same = all(same_target(s.target, first) for s in sources)
    return TargetRecord(
        kind=kind,  # type: ignore[arg-type]
        values=dict(first) if same else None,
        per_occupation=[
            OccupationTarget(country=c, occupation=o, target=dict(t))
            for (c, o), t in per_occupation.items()
        ],
    )


def resolve_job(args: argparse.Namespace, hp: HParams) -> Job:
    if args.dataset is not None:
        spec = get_dataset(args.dataset)
        task = check_task(args.task or "attribute")
        sources = ds.dataset_sources(spec.name, task, hp.rows_per_occupation)
        return Job(
            spec.name,
            get_attribute(spec.attribute),
            task,
            spec.country,
            sources,
            _target_record(sources, spec.target),
            args.method,
        )
    sources, attribute, task = ds.custom_sources(args.prompts, hp.rows_per_occupation)
    if args.task is not None and args.task != task:
        raise DistctlError(f"--task {args.task} but the rows of {args.prompts} are {task}", "task")
    countries = {s.country for s in sources}
    from distctl.prompts import load_prompt_rows

    kinds = {target_kind(r.target) for r in load_prompt_rows(args.prompts)}
    return Job(
        f"custom:{args.prompts.name}",
        get_attribute(attribute),
        task,
        countries.pop() if len(countries) == 1 else None,
        sources,
        _target_record(sources, kinds.pop() if len(kinds) == 1 else "explicit"),
        args.method,
    )


def story_generator(settings: Settings, attribute: Attribute) -> ds.StoryGenerate:
    """Stories from the base model through the generation core, all in one engine session."""

    def generate(requests: list[ds.StoryRequest]) -> list[list[str]]:
        from distctl.engine import build_engine, load_tokenizer
        from distctl.generation import GenerationSpec, Generator, Mode

        async def collect() -> list[list[str]]:
            engine = build_engine(settings)
            try:
                generator = Generator(engine, load_tokenizer(settings))

                async def one(prompt: str, cls: str, n: int, seed: int) -> list[str]:
                    only = {c: float(c == cls) for c in attribute.classes}
                    spec = GenerationSpec(
                        prompt=prompt,
                        attribute=attribute,
                        target=only,
                        n=n,
                        mode=Mode.EXACT,
                        task="story",
                        seed=seed,
                    )
                    return [g.text async for g in generator.run(spec)]

                return list(await asyncio.gather(*(one(*r) for r in requests)))
            finally:
                engine.shutdown()

        return asyncio.run(collect())

    return generate


def text_bank(job: Job, settings: Settings, hp: HParams, model_sha: str) -> ds.TextBank:
    if job.task == "attribute":
        return ds.short_answer_bank(job.attribute)
    prompts = [s.prompt for s in job.sources]
    key = ds.story_cache_key(
        model_sha, job.attribute.name, prompts, hp.story_texts_per_class, hp.seed
    )
    return ds.story_bank(
        job.attribute,
        prompts,
        story_generator(settings, job.attribute),
        hp.story_texts_per_class,
        hp.seed,
        settings.home / "cache" / "story-texts" / f"{key}.json",
    )


def load_model(folder: Path, hp: HParams, device: torch.device) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(hp.seed)  # the LoRA A matrices are drawn at random
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.lora_targets(),
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=False,
        modules_to_save=None,
    )
    return get_peft_model(base, config)


def train_method(rt: Runtime, method: str, rows: Sequence[ds.TrainRow], enc: ds.Encoder) -> None:
    """The stages of a method, in order; stage indices order the checkpoints."""
    seed = rt.hp.seed
    if method in STEERING:
        run_sft(rt, 0, ds.sft_groups(rows, enc, steering=True))
        if method == "ours-kl":
            run_hybrid(rt, 1, ds.sft_groups(rows, enc, steering=True), kto=False, kl=True)
        else:
            run_hybrid(rt, 1, ds.kto_groups(rows, enc, seed), kto=True, kl=method == "ours")
    elif method == "ift":
        run_sft(rt, 0, ds.sft_groups(rows, enc, steering=False))
    else:
        run_sft(rt, 0, ds.sft_groups(rows, enc, steering=False))
        run_dpo(rt, 1, ds.dpo_groups(rows, enc))


@dataclass(frozen=True)
class ImpliedAnswers:
    """What the model implies for one prompt, by scoring (no sampling)."""

    shares: dict[str, float]  # over the K classes, sums to 1
    # the probability of answering with exactly one of the canonical answers: the shares are
    # renormalised over them, so they cannot show mass that leaves them for other texts
    answer_mass: float


def implied_answers(
    rt: Runtime, rows: Sequence[ds.TrainRow], enc: ds.Encoder, steering: bool
) -> list[ImpliedAnswers]:
    """For steering adapters P(c) = sum_k P(digit k) P(class c | digit k), P(c | k) over the
    canonical answers of the K classes; for plain models P(c) over the canonical answers."""
    attr = enc.attribute
    answers = [attr.label(c) for c in attr.classes]
    out = []
    for row in rows:
        if steering:
            completions = [enc.completion(a, k) for k in attr.classes for a in answers]
        else:
            completions = [enc.completion(a) for a in answers]
        group = ds.Group(enc.prompt(row.prompt), tuple(completions), enc.target(row))
        with torch.no_grad():
            scores = forward(rt, ds.pack([group], enc.pad).to(rt.device))
        if steering:
            assert scores.digit_logps is not None
            digits = torch.softmax(scores.digit_logps[0].float(), -1)  # [K]
            given = (scores.logps - scores.first_logps)[0].float().reshape(attr.k, attr.k)
            shares = digits @ torch.softmax(given, -1)
            mass = digits @ given.exp().sum(-1)
        else:
            shares = torch.softmax(scores.logps[0].float(), -1)
            mass = scores.logps[0].float().exp().sum()
        out.append(
            ImpliedAnswers(dict(zip(attr.classes, shares.tolist(), strict=True)), mass.item())
        )
    return out


def validate(
    rt: Runtime, rows: Sequence[ds.TrainRow], enc: ds.Encoder, steering: bool
) -> dict[str, float]:
    """The mean over the validation rows' occupations of the implied shares' MAE, and the mean
    canonical-answer mass over the rows."""
    from distctl.metrics import mae

    rt.model.eval()
    implied = implied_answers(rt, rows, enc, steering)
    rt.model.train()
    per_key: dict[tuple[str | None, str], list[float]] = {}
    for row, answers in zip(rows, implied, strict=True):
        per_key.setdefault((row.country, row.occupation or row.prompt), []).append(
            mae(row.target, answers.shares)
        )
    return {
        "validation_mae": sum(sum(v) / len(v) for v in per_key.values()) / len(per_key),
        "answer_mass": sum(a.answer_mass for a in implied) / len(implied),
    }


def search(
    job: Job,
    rows: Sequence[ds.TrainRow],
    enc: ds.Encoder,
    hp: HParams,
    folder: Path,
    device: torch.device,
    trials: int,
    progress: bool,
) -> tuple[HParams, list[dict]]:
    """Hold out one training paraphrase, train each learning-rate scale on the rest, keep the
    scale whose validation MAE is lowest."""
    if job.task != "attribute" or job.dataset not in DATASETS:
        raise DistctlError("--search needs --dataset and --task attribute", field="search")
    spec = get_dataset(job.dataset)
    held_out = paraphrases(job.task, spec.attribute, "train")[-1]
    validation = {render(held_out, o) for o in spec.occupations()}
    train_rows, val_rows = ds.split_rows(rows, validation)
    results = []
    for scale in SEARCH_SCALES[:trials]:
        trial = replace(hp, lr=hp.lr * scale, stage2_lr=hp.stage2_lr * scale)
        rt = Runtime(
            load_model(folder, trial, device),
            trial,
            enc.pad,
            _digit_ids(job.method, enc),
            None,
            progress,
        )
        train_method(rt, job.method, train_rows, enc)
        scores = validate(rt, val_rows, enc, job.method in STEERING)
        results.append({"lr": trial.lr, "stage2_lr": trial.stage2_lr} | scores)
        print(
            f"search: lr {trial.lr:.2e} stage2_lr {trial.stage2_lr:.2e} -> validation MAE "
            f"{scores['validation_mae']:.4f}, answer mass {scores['answer_mass']:.3f}"
        )
    best = min(results, key=lambda r: r["validation_mae"])
    return replace(hp, lr=best["lr"], stage2_lr=best["stage2_lr"]), results


def _digit_ids(method: str, enc: ds.Encoder) -> torch.Tensor | None:
    return torch.tensor(enc.codec.token_ids) if method in STEERING else None


def run_id(job: Job, hp: HParams, model_sha: str, destination: str) -> str:
    blob = json.dumps(
        [
            job.method,
            job.task,
            job.dataset,
            [s.prompt for s in job.sources],
            [list(s.target.values()) for s in job.sources],
            hp.as_dict(),
            model_sha,
            destination,
        ],
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hp = from_args(args)
    settings = Settings()
    folder = require_model(settings)
    parallel.init()
    try:
        return _train(args, hp, settings, folder)
    finally:
        parallel.finish()


def _train(args: argparse.Namespace, hp: HParams, settings: Settings, folder: Path) -> int:
    job = resolve_job(args, hp)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    enc = ds.Encoder(tokenizer, job.attribute)
    model_sha = weights_sha256(folder)
    with parallel.main_first():  # one process generates the story texts, the others read them
        bank = text_bank(job, settings, hp, model_sha)
    rows = ds.build_rows(job.sources, job.attribute, bank, hp.seed)
    device = default_device()
    progress = not args.no_progress
    search_results: list[dict] = []
    if args.search:
        hp, search_results = search(job, rows, enc, hp, folder, device, args.search, progress)

    destination = str(args.out.resolve()) if args.out else f"name:{args.name}"
    checkpoint_dir = settings.home / "runs" / run_id(job, hp, model_sha, destination)
    if args.fresh:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    rt = Runtime(
        load_model(folder, hp, device),
        hp,
        enc.pad,
        _digit_ids(job.method, enc),
        checkpoint_dir,
        progress,
    )
    started = time.monotonic()
    train_method(rt, job.method, rows, enc)
    seconds = time.monotonic() - started
    if not rt.is_main:
        return 0

    manifest = Manifest(
        base_model=str(folder),
        base_model_sha256=model_sha,
        dataset=job.dataset,
        country=job.country,
        attribute=job.attribute.name,
        classes=list(job.attribute.classes),
        digit_tokens=list(enc.codec.digits) if job.method in STEERING else [],
        task=job.task,
        target=job.target,
        method=job.method,
        hyperparameters=hp.as_dict()
        | {"rows": len(rows), "train_seconds": round(seconds, 1), "device": str(device)}
        | ({"search": search_results} if search_results else {}),
        curves=rt.curves,
        seed=hp.seed,
        package_versions=package_versions(),
    )
    written = export(
        rt.model,
        manifest,
        root=None if args.out else settings.adapters_path,
        name=args.name,
        out=args.out,
    )
    if not args.keep_checkpoint:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    print(
        f"adapter {written.name} v{written.version} written to {written.path} "
        f"({seconds / 60:.1f} min of training)"
    )
    return 0
