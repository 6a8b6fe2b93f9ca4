"""Training throughput: stage 2 of `ours` against TRL's KTOTrainer, stage 1 against a plain
PEFT forward+backward loop, on the same model, batch and LoRA settings.

    .venv/bin/python bench/train_throughput.py [--steps 3] [--groups 4] [--model DIR]

A stage-2 step of `ours` on G prompt groups trains 2G examples (a desirable and an undesirable
completion per prompt) plus the steering KL; TRL's peer gets batches of 2G examples, its
reference log-probabilities precomputed too (`precompute_ref_log_probs=True`) and its KL pairs
built the same way (another pass over mismatched pairs, where ours packs them into the same
pass). Stage 1's peer is `model(input_ids, labels=...)` with the prompt masked, which computes
the LM head on every position. The first step of each is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distctl.attributes import get_attribute
from distctl.config import Settings
from trainer import datasets as ds
from trainer.hparams import HParams
from trainer.hybrid import hybrid_step, reference_logps
from trainer.sft import Runtime, sft_step, train_stage
from trainer.train import load_model


class StepClock:
    """Per-step durations of a training loop, from the start of each step to the next."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    def timed(self, warmup: int) -> float:
        durations = [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return sum(durations[warmup:])


def ours(
    folder: Path, hp: HParams, groups: list[ds.Group], enc: ds.Encoder, stage: int, steps: int
) -> float:
    """Seconds of `steps` timed steps of our stage 1 (stage 0) or stage 2 (stage 1)."""
    rt = Runtime(
        load_model(folder, hp, torch.device("cpu")),
        hp,
        enc.pad,
        torch.tensor(enc.codec.token_ids),
        None,
        progress=False,
    )
    if stage == 0:
        inner = sft_step(rt)
    else:
        inner = hybrid_step(rt, reference_logps(rt, groups), kto=True, kl=True)
    clock = StepClock()

    def step(batch, indices):
        clock.mark()
        return inner(batch, indices)

    train_stage(rt, stage, "bench", groups, hp.stage2_lr if stage else hp.lr, step)
    clock.mark()
    return clock.timed(1)


def trl_kto(
    folder: Path, hp: HParams, rows: list[ds.TrainRow], enc: ds.Encoder, examples: int, steps: int
) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import KTOConfig, KTOTrainer

    data = []
    for r in rows:
        prompt = enc.tokenizer.decode(enc.prompt(r.prompt))
        digit = enc.codec.digit(r.cls)
        data += [
            {"prompt": prompt, "completion": digit + r.answer, "label": True},
            {"prompt": prompt, "completion": digit + r.other, "label": False},
        ]
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.mark()

        def on_train_end(self, args, state, control, **kwargs):
            clock.mark()

    with tempfile.TemporaryDirectory() as out:
        config = KTOConfig(
            output_dir=out,
            per_device_train_batch_size=examples,
            max_steps=steps + 1,
            learning_rate=hp.stage2_lr,
            beta=hp.beta,
            precompute_ref_log_probs=True,
            report_to=[],
            save_strategy="no",
            logging_steps=10_000,
            use_cpu=True,
            max_grad_norm=hp.grad_clip,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = KTOTrainer(
            model=load_model(folder, hp, torch.device("cpu")),
            args=config,
            train_dataset=Dataset.from_list(data),
            processing_class=enc.tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    return clock.timed(1)


def plain_peft(folder: Path, hp: HParams, groups: list[ds.Group], pad: int, steps: int) -> float:
    model = load_model(folder, hp, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.lr)
    clock = StepClock()
    for i in range(steps + 1):
        clock.mark()
        batch = groups[i * hp.batch_size : (i + 1) * hp.batch_size]
        seqs = [(g.prompt_ids, g.completions[0]) for g in batch]
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((len(seqs), width), pad)
        labels = torch.full((len(seqs), width), -100)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, (p, c) in enumerate(seqs):
            n = len(p) + len(c)
            ids[j, :n] = torch.tensor([*p, *c])
            labels[j, len(p) : n] = torch.tensor(c)
            mask[j, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        optimizer.step()
    clock.mark()
    return clock.timed(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--groups", type=int, default=4, help="prompt groups per step")
    parser.add_argument("--model", type=Path, default=Settings().model_path)
    parser.add_argument("--part", choices=("all", "stage1", "stage2"), default="all")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    gender = get_attribute("gender")
    enc = ds.Encoder(AutoTokenizer.from_pretrained(args.model), gender)
    n = args.groups * (args.steps + 1)
    sources = ds.dataset_sources("gender-us-uniform", "attribute", 1 + n // 14)[:n]
    rows = ds.build_rows(sources, gender, ds.short_answer_bank(gender), seed=0)
    hp = HParams(batch_size=args.groups, epochs=1, max_steps=args.steps + 1, warmup_steps=0)

    kto_groups = ds.kto_groups(rows, enc, seed=0)
    sft_groups = ds.sft_groups(rows, enc, steering=True)
    timed = args.steps
    results: dict[str, float] = {}

    def record(key: str, examples: int, seconds: float) -> None:
        # printed as soon as measured: on a busy 2-core machine one figure takes minutes
        results[key] = examples * timed / seconds
        print(f"{key}: {results[key]:.3f} examples/s ({seconds / timed:.1f} s/step)", flush=True)

    if args.part in ("all", "stage2"):
        record("ours_stage2_ex_s", 2 * args.groups, ours(args.model, hp, kto_groups, enc, 1, timed))
        record(
            "trl_kto_ex_s",
            2 * args.groups,
            trl_kto(args.model, hp, rows, enc, 2 * args.groups, timed),
        )
        results["stage2_ratio"] = results["ours_stage2_ex_s"] / results["trl_kto_ex_s"]
        print(
            f"stage 2: ours {results['ours_stage2_ex_s']:.2f} examples/s, TRL KTOTrainer "
            f"{results['trl_kto_ex_s']:.2f} examples/s, ratio {results['stage2_ratio']:.2f} "
            "(aim >= 1.0)"
        )
    if args.part in ("all", "stage1"):
        record("ours_stage1_ex_s", args.groups, ours(args.model, hp, sft_groups, enc, 0, timed))
        record(
            "plain_peft_ex_s", args.groups, plain_peft(args.model, hp, sft_groups, enc.pad, timed)
        )
        results["stage1_ratio"] = results["ours_stage1_ex_s"] / results["plain_peft_ex_s"]
        print(
            f"stage 1: ours {results['ours_stage1_ex_s']:.2f} examples/s, plain PEFT loop "
            f"{results['plain_peft_ex_s']:.2f} examples/s, ratio {results['stage1_ratio']:.2f} "
            "(aim >= 0.9)"
        )
    print(
        json.dumps(
            {k: round(v, 3) for k, v in results.items()}
            | {"groups": args.groups, "timed_steps": timed, "threads": torch.get_num_threads()}
        )
    )


if __name__ == "__main__":
    main()
