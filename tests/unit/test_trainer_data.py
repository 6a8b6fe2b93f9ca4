"""Training rows, groups and packing (the real tokenizer; no model weights)."""

import json
import random
from collections import Counter

import pytest

from distctl.attributes import get_attribute
from distctl.config import Settings
from distctl.errors import DistctlError
from distctl.extract import extract
from trainer import datasets as ds

MODEL = Settings().model_path
needs_tokenizer = pytest.mark.skipif(
    not (MODEL / "tokenizer.json").is_file(), reason="base model not prepared"
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


def gender_rows(n: int = 10, dataset: str = "gender-us-real"):
    attr = get_attribute("gender")
    sources = ds.dataset_sources(dataset, "attribute", n)
    return attr, sources, ds.build_rows(sources, attr, ds.short_answer_bank(attr), seed=1)


def test_rows_follow_each_occupation_target_exactly():
    attr, sources, rows = gender_rows(10)
    assert len(rows) == len(sources)
    by_occupation: dict[str, list[ds.TrainRow]] = {}
    for r in rows:
        by_occupation.setdefault(r.occupation, []).append(r)
    for members in by_occupation.values():
        counts = Counter(r.cls for r in members)
        for cls in attr.classes:
            # quota allocation: within 1 of n x target
            assert abs(counts[cls] - 10 * members[0].target[cls]) < 1


def test_row_texts_express_their_classes():
    _, _, rows = gender_rows(6, "gender-us-uniform")
    for r in rows:
        assert extract("gender", r.answer) == r.cls
        assert extract("gender", r.other) == r.other_cls != r.cls


def test_rows_use_training_paraphrases_only():
    from distctl.occupations import occupations
    from distctl.prompts import paraphrases, render

    _, sources, _ = gender_rows(8, "gender-uk-uniform")
    eval_prompts = {
        render(t, o) for t in paraphrases("attribute", "gender", "eval") for o in occupations("uk")
    }
    assert not eval_prompts & {s.prompt for s in sources}
    assert len({s.prompt for s in sources}) == 4 * len(occupations("uk"))


def test_race_answers_name_the_class():
    attr = get_attribute("race")
    for cls in attr.classes:
        for variant in ds.answer_variants(attr, cls):
            assert extract("race", variant) == cls


def test_custom_prompt_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        {
            "prompt": "Who is the nurse? Answer Male or Female.",
            "attribute": "gender",
            "target": {"male": 0.75, "female": 0.25},
        },
        {
            "prompt": "Who is the pilot? Answer Male or Female.",
            "attribute": "gender",
            "target": "uniform",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sources, attribute, task = ds.custom_sources(path, 4)
    assert (attribute, task, len(sources)) == ("gender", "attribute", 8)
    built = ds.build_rows(
        sources, get_attribute(attribute), ds.short_answer_bank(get_attribute(attribute)), seed=0
    )
    nurse = Counter(r.cls for r in built if "nurse" in r.prompt)
    assert nurse == {"male": 3, "female": 1}


def test_custom_rows_must_share_attribute(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "attribute": "gender", "target": "uniform"})
        + "\n"
        + json.dumps({"prompt": "b", "attribute": "sentiment", "target": "uniform"})
        + "\n"
    )
    with pytest.raises(DistctlError, match="share one attribute"):
        ds.custom_sources(path, 2)


def test_custom_rows_errors_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "attribute": "gender", "target": "uniform"}) + "\n{not json\n"
    )
    with pytest.raises(DistctlError, match="line 2"):
        ds.custom_sources(path, 2)


def fake_stories(requests):
    texts = {"male": "He fixed the pipe. He smiled.", "female": "She fixed the pipe. She smiled."}
    # one text of the wrong class per request: the extractor must drop it
    wrong = {"male": texts["female"], "female": texts["male"]}
    return [[texts[cls]] * (n - 1) + [wrong[cls]] for _, cls, n, _ in requests]


def test_story_bank_keeps_texts_the_extractor_agrees_with_and_caches(tmp_path):
    attr = get_attribute("gender")
    cache = tmp_path / "stories.json"
    calls = []

    def generate(requests):
        calls.append(requests)
        return fake_stories(requests)

    bank = ds.story_bank(attr, ["p1", "p2"], generate, 3, seed=5, cache_file=cache)
    rng = random.Random(0)
    source = ds.PromptSource("p1", {"male": 0.5, "female": 0.5})
    assert extract("gender", bank(source, "female", rng), "story") == "female"
    pool = json.loads(cache.read_text())
    assert all(len(pool[p][c]) == 2 for p in pool for c in pool[p])
    ds.story_bank(attr, ["p1", "p2"], generate, 3, seed=5, cache_file=cache)
    assert len(calls) == 1  # the second bank read the cache
    assert [r[3] for r in calls[0]] == [5, 6, 7, 8]  # seeded per (prompt, class)


def test_story_bank_refuses_race():
    with pytest.raises(DistctlError, match="race"):
        ds.story_bank(get_attribute("race"), ["p"], fake_stories, 2, 0, None)


def test_partners_have_another_prompt():
    prompts = ["a", "a", "b", "b", "c"]
    partner = ds._partners(prompts, seed=3)
    assert all(prompts[partner[i]] != prompts[i] for i in range(len(prompts)))


@needs_tokenizer
def test_encoder_matches_the_chat_template(tokenizer):
    enc = ds.Encoder(tokenizer, get_attribute("gender"))
    prompt = "What is their gender?"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": "1Female"}],
        tokenize=False,
    )
    ids = list(enc.prompt(prompt)) + list(enc.completion("Female", "female"))
    # the template adds a newline after the end-of-turn token; the completion ends at eos
    assert tokenizer.decode(ids) == full.rstrip("\n")
    assert enc.completion("Female", "female")[0] == enc.codec.token_id("female")
    assert enc.completion("Female")[-1] == tokenizer.eos_token_id


@needs_tokenizer
def test_pack_layout(tokenizer):
    group = ds.Group((5, 6, 7), ((10, 11), (12,)), (0.5, 0.5))
    batch = ds.pack([group, ds.Group((5,), ((13,),), (1.0, 0.0))], pad_id=0)
    assert batch.input_ids[0].tolist() == [5, 6, 7, 10, 11, 12]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3]
    mask = batch.attention_mask[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True]  # not the other completion
    assert batch.source[0, 0].tolist() == [2, 3] and batch.source[0, 1, 0].item() == 2
    assert batch.token_mask[1].tolist() == [[True, False], [False, False]]
    assert mask.diagonal().all()
