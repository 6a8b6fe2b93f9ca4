"""Training rows and the packed batches the losses read.

A *row* is one training prompt with the class its steering digit stands for, a text expressing
that class (desirable) and a text expressing another class (undesirable). Across an occupation's
rows the classes follow the occupation's target exactly (`distctl.quota.allocate`), so the
digits do too.

A *group* is one prompt with the completions scored against it. Every completion of a group
shares the prompt's forward pass: `pack` lays a group out as `prompt + c1 + c2 + ...` with a
block attention mask (each completion sees the prompt and itself, never another completion) and
position ids that restart after the prompt for every completion. This is what makes the KTO
reference point's mismatched pairs nearly free: they add their completion tokens, not another
pass over the prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distctl.attributes import Attribute
from distctl.codec import SteeringCodec
from distctl.datasets import get_dataset
from distctl.errors import DistctlError
from distctl.extract import extract
from distctl.prompts import load_prompt_file, paraphrases, render
from distctl.quota import allocate
from distctl.targets import Target


@dataclass(frozen=True)
class PromptSource:
    """One training prompt (a rendered paraphrase or a custom prompt row) and its target."""

    prompt: str
    target: Target
    occupation: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class TrainRow:
    prompt: str
    target: Target
    cls: str
    answer: str  # expresses cls
    other_cls: str
    other: str  # expresses other_cls
    occupation: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class Group:
    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]
    target: tuple[float, ...]  # in class (= digit) order, for the steering KL


# Which text of a class a row gets; stories come from the base model (see `story_texts`).
TextBank = Callable[[PromptSource, str, random.Random], str]


def answer_variants(attribute: Attribute, cls: str) -> tuple[str, ...]:
    """Short answers naming the class, as the paper's attribute task expects, in a few surface
    forms so the adapter does not learn one exact string."""
    label = attribute.label(cls)
    return (label, f"{label}.", label.lower())


def short_answer_bank(attribute: Attribute) -> TextBank:
    def pick(source: PromptSource, cls: str, rng: random.Random) -> str:
        return rng.choice(answer_variants(attribute, cls))

    return pick


def dataset_sources(name: str, task: str, rows_per_occupation: int) -> list[PromptSource]:
    """`rows_per_occupation` prompts per occupation, cycling over the training paraphrases."""
    spec = get_dataset(name)
    templates = paraphrases(task, spec.attribute, "train")
    sources = []
    for occupation in spec.occupations():
        target = spec.target_for(occupation)
        sources += [
            PromptSource(
                render(templates[j % len(templates)], occupation),
                target,
                occupation.title,
                occupation.country,
            )
            for j in range(rows_per_occupation)
        ]
    return sources


def custom_sources(path: Path, rows_per_prompt: int) -> tuple[list[PromptSource], str, str]:
    """The prompt rows of a JSONL file, each repeated `rows_per_prompt` times, with the one
    attribute and task they must share (an adapter steers one attribute)."""
    rows, attribute, task = load_prompt_file(path)
    sources = [
        PromptSource(r.prompt, r.resolved_target(), r.occupation, r.country)
        for r in rows
        for _ in range(rows_per_prompt)
    ]
    return sources, attribute, task


def build_rows(
    sources: Sequence[PromptSource], attribute: Attribute, bank: TextBank, seed: int
) -> list[TrainRow]:
    """One row per source; within each run of sources sharing a prompt set (an occupation, or a
    custom prompt row) the classes follow the target exactly, in shuffled order so that no
    paraphrase is tied to one class."""
    rng = random.Random(seed)
    by_key: dict[tuple[str | None, str | None, tuple[float, ...]], list[PromptSource]] = {}
    for source in sources:
        key = (source.country, source.occupation or source.prompt, tuple(source.target.values()))
        by_key.setdefault(key, []).append(source)
    rows = []
    for members in by_key.values():
        classes = allocate(members[0].target, len(members))
        rng.shuffle(classes)
        for source, cls in zip(members, classes, strict=True):
            other_cls = rng.choice([c for c in attribute.classes if c != cls])
            rows.append(
                TrainRow(
                    source.prompt,
                    source.target,
                    cls,
                    bank(source, cls, rng),
                    other_cls,
                    bank(source, other_cls, rng),
                    source.occupation,
                    source.country,
                )
            )
    return rows


def split_rows(
    rows: Sequence[TrainRow], validation_prompts: set[str]
) -> tuple[list[TrainRow], list[TrainRow]]:
    """(train, validation): the rows whose prompt is one of `validation_prompts` validate."""
    train = [r for r in rows if r.prompt not in validation_prompts]
    val = [r for r in rows if r.prompt in validation_prompts]
    return train, val


# ---- story texts ------------------------------------------------------------------------------

StoryRequest = tuple[str, str, int, int]  # (prompt, class, n, seed)
StoryGenerate = Callable[[list[StoryRequest]], list[list[str]]]
"""Generates n texts of the class for each request, all in one call (one engine session); the
generation core asks the base model through `distctl.prompts.class_instruction`."""


def story_cache_key(model_sha256: str, attribute: str, prompts: Sequence[str], n: int, seed: int):
    blob = json.dumps([model_sha256, attribute, list(prompts), n, seed]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def story_bank(
    attribute: Attribute,
    prompts: Sequence[str],
    generate: StoryGenerate,
    per_class: int,
    seed: int,
    cache_file: Path | None,
) -> TextBank:
    """Stories per (prompt, class) from the base model, kept only where the extractor reads the
    class back; cached as JSON so a rerun reuses them."""
    if attribute.name == "race":
        raise DistctlError(
            "the story task is not offered for race: a small model rarely names a race category "
            "in a story, so the texts cannot be checked; use --task attribute",
            field="task",
        )
    pool: dict[str, dict[str, list[str]]]
    if cache_file is not None and cache_file.is_file():
        pool = json.loads(cache_file.read_text())
    else:
        keys = [(p, c) for p in dict.fromkeys(prompts) for c in attribute.classes]
        requests = [(p, c, per_class, seed + i) for i, (p, c) in enumerate(keys)]
        pool = {}
        for (prompt, cls), texts in zip(keys, generate(requests), strict=True):
            pool.setdefault(prompt, {})[cls] = [
                t.strip() for t in texts if extract(attribute, t, task="story") == cls
            ]
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(pool, indent=1))
            tmp.replace(cache_file)
    by_class = {
        c: [t for texts in pool.values() for t in texts.get(c, [])] for c in attribute.classes
    }
    missing = [c for c in attribute.classes if not by_class.get(c)]
    if missing:
        raise DistctlError(
            f"the base model wrote no story the extractor reads as {', '.join(missing)}; "
            "raise --story-texts-per-class",
            field="task",
        )

    def pick(source: PromptSource, cls: str, rng: random.Random) -> str:
        # this prompt's own stories when it has one of the class, else any prompt's
        return rng.choice(pool.get(source.prompt, {}).get(cls) or by_class[cls])

    return pick


# ---- groups and packing -----------------------------------------------------------------------


class Encoder:
    """Prompt and completion token ids, as vLLM sees them: the prompt through the chat template
    with the generation prompt; a completion as [digit] + text + end-of-turn."""

    def __init__(self, tokenizer, attribute: Attribute) -> None:
        self.tokenizer = tokenizer
        self.attribute = attribute
        self.codec = SteeringCodec(tokenizer, attribute)
        if tokenizer.eos_token_id is None:
            raise DistctlError("the tokenizer has no end-of-sequence token", field="tokenizer")
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        self._prompts: dict[str, tuple[int, ...]] = {}

    def prompt(self, text: str) -> tuple[int, ...]:
        if text not in self._prompts:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            self._prompts[text] = tuple(ids)
        return self._prompts[text]

    def completion(self, text: str, cls: str | None = None) -> tuple[int, ...]:
        """`cls` given: the steering digit of that class comes first."""
        digit = () if cls is None else (self.codec.token_id(cls),)
        return (*digit, *self.tokenizer(text, add_special_tokens=False)["input_ids"], self.eos)

    def target(self, row: TrainRow) -> tuple[float, ...]:
        return tuple(float(row.target.get(c, 0.0)) for c in self.attribute.classes)


def sft_groups(rows: Sequence[TrainRow], enc: Encoder, steering: bool) -> list[Group]:
    """Stage 1 (steering: digit + text) and IFT (plain text): the desirable completion only."""
    return [
        Group(
            enc.prompt(r.prompt),
            (enc.completion(r.answer, r.cls if steering else None),),
            enc.target(r),
        )
        for r in rows
    ]


def kto_groups(rows: Sequence[TrainRow], enc: Encoder, seed: int) -> list[Group]:
    """Stage 2: completions (desirable, undesirable, and the two completions of a partner row
    with another prompt: the mismatched pairs of KTO's reference point).

    TRL pairs each example with the next one's completion inside the batch; here the partner is
    fixed once per row (seeded), so the frozen reference's log-probabilities of the mismatched
    pairs can be precomputed with everything else. Both are the same estimator of E[log-ratio]
    over mismatched prompt/completion pairs.
    """
    own = [(enc.completion(r.answer, r.cls), enc.completion(r.other, r.cls)) for r in rows]
    partner = _partners([r.prompt for r in rows], seed)
    return [
        Group(enc.prompt(r.prompt), (*own[i], *own[partner[i]]), enc.target(r))
        for i, r in enumerate(rows)
    ]


def dpo_groups(rows: Sequence[TrainRow], enc: Encoder) -> list[Group]:
    """DPO: (chosen, rejected) plain answers; chosen classes follow the target."""
    return [
        Group(
            enc.prompt(r.prompt),
            (enc.completion(r.answer), enc.completion(r.other)),
            enc.target(r),
        )
        for r in rows
    ]


def _partners(prompts: Sequence[str], seed: int) -> list[int]:
    """For each index another index with a different prompt (a seeded derangement)."""
    n = len(prompts)
    if len(set(prompts)) < 2:
        raise DistctlError("KTO's reference point needs at least two different prompts")
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    partner = [0] * n
    for pos, i in enumerate(order):
        step = 1
        while prompts[order[(pos + step) % n]] == prompts[i]:
            step += 1
        partner[i] = order[(pos + step) % n]
    return partner


@dataclass
class PackedBatch:
    """Tensors of a batch of groups (G groups, M completion slots, L tokens per slot)."""

    input_ids: torch.Tensor  # [G, T]
    position_ids: torch.Tensor  # [G, T]
    attention_mask: torch.Tensor  # [G, 1, T, T] bool, True = may attend
    prompt_last: torch.Tensor  # [G] position of the last prompt token
    source: torch.Tensor  # [G, M, L] position whose logits predict each completion token
    labels: torch.Tensor  # [G, M, L] completion token ids
    token_mask: torch.Tensor  # [G, M, L] bool, real completion tokens
    target: torch.Tensor  # [G, K]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def pack(groups: Sequence[Group], pad_id: int) -> PackedBatch:
    g = len(groups)
    m = max(len(x.completions) for x in groups)
    lengths = [len(x.prompt_ids) + sum(len(c) for c in x.completions) for x in groups]
    t = max(lengths)
    slot = max(len(c) for x in groups for c in x.completions)
    input_ids = torch.full((g, t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((g, t), dtype=torch.long)
    # padding attends to itself only, so no attention row is empty (empty rows give NaN)
    mask = torch.eye(t, dtype=torch.bool).repeat(g, 1, 1)
    source = torch.zeros((g, m, slot), dtype=torch.long)
    labels = torch.full((g, m, slot), pad_id, dtype=torch.long)
    token_mask = torch.zeros((g, m, slot), dtype=torch.bool)
    prompt_last = torch.zeros(g, dtype=torch.long)
    for i, group in enumerate(groups):
        p = len(group.prompt_ids)
        input_ids[i, :p] = torch.tensor(group.prompt_ids)
        position_ids[i, :p] = torch.arange(p)
        mask[i, :p, :p] = torch.tril(torch.ones(p, p, dtype=torch.bool))
        prompt_last[i] = p - 1
        start = p
        for j, completion in enumerate(group.completions):
            n = len(completion)
            end = start + n
            input_ids[i, start:end] = torch.tensor(completion)
            position_ids[i, start:end] = torch.arange(p, p + n)
            mask[i, start:end, :p] = True
            mask[i, start:end, start:end] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            # token 0 is predicted by the prompt's last position, token k by completion token k-1
            source[i, j, :n] = torch.tensor([p - 1, *range(start, end - 1)])
            labels[i, j, :n] = torch.tensor(completion)
            token_mask[i, j, :n] = True
            start = end
    target = torch.tensor([x.target for x in groups], dtype=torch.float32)
    return PackedBatch(
        input_ids, position_ids, mask[:, None], prompt_last, source, labels, token_mask, target
    )


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Index batches over `epochs` seeded shuffles (the last batch of an epoch may be short)."""
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        out += [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return out
