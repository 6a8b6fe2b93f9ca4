"""Stages, resumption and the `distctl train` command on a tiny random Llama that uses the real
tokenizer (seconds, not minutes)."""

import json
import math
from dataclasses import replace

import pytest
import torch

from distctl.attributes import get_attribute
from distctl.config import Settings
from distctl.manifest import read_manifest
from trainer import datasets as ds
from trainer.hparams import HParams, defaults
from trainer.hybrid import frozen_reference, run_hybrid
from trainer.losses import score, steering_kl
from trainer.sft import (
    Checkpoint,
    Runtime,
    compute_dtype,
    forward,
    run_sft,
    sft_step,
    train_stage,
)

MODEL = Settings().model_path
pytestmark = pytest.mark.skipif(
    not (MODEL / "tokenizer.json").is_file(), reason="base model not prepared"
)
GENDER = get_attribute("gender")
SKEWED = {"male": 0.9, "female": 0.1}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from transformers import AutoTokenizer

    return ds.Encoder(AutoTokenizer.from_pretrained(tiny_model_dir), GENDER)


def make_runtime(folder, encoder, hp, checkpoint_dir=None):
    from trainer.train import load_model

    return Runtime(
        load_model(folder, hp, torch.device("cpu")),
        hp,
        encoder.pad,
        torch.tensor(encoder.codec.token_ids),
        checkpoint_dir,
        progress=False,
    )


def skewed_rows(n=10):
    prompts = [
        f"Pick a random worker number {i}. What is their gender? Respond only with Male or Female."
        for i in range(2)
    ]
    sources = [
        ds.PromptSource(p, SKEWED, f"job {i}", "us")
        for i, p in enumerate(prompts)
        for _ in range(n)
    ]
    return ds.build_rows(sources, GENDER, ds.short_answer_bank(GENDER), seed=0)


def test_packed_scores_equal_separate_forward_passes(tiny_model_dir, encoder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = encoder.prompt("What is their gender?")
    completions = (
        encoder.completion("Male", "male"),
        encoder.completion("She is a woman."),
        encoder.completion("Female", "female"),
    )
    digits = torch.tensor(encoder.codec.token_ids)
    with torch.no_grad():
        packed = score(model, ds.pack([ds.Group(prompt, completions, (0.5, 0.5))], 2), digits)
        for j, completion in enumerate(completions):
            ids = torch.tensor([[*prompt, *completion]])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            n = len(completion)
            expected = logprobs[-n:].gather(1, ids[0, -n:, None]).sum()
            assert packed.logps[0, j].item() == pytest.approx(expected.item(), abs=1e-4)
        first = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
        assert torch.allclose(packed.digit_logps[0], first[digits], atol=1e-4)


def mean_kl(rt, groups):
    with torch.no_grad():
        s = forward(rt, ds.pack(groups, rt.pad_id))
        return steering_kl(s.digit_logps, ds.pack(groups, rt.pad_id).target).item()


# bf16 runs the GPU path's precision through CPU autocast: the same code, another device
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stage2_lowers_the_steering_kl(tiny_model_dir, encoder, precision):
    hp = HParams(
        lr=5e-3,
        stage2_lr=5e-3,
        batch_size=4,
        epochs=2,
        max_steps=6,
        target_modules="all-linear",
        warmup_steps=0,
        precision=precision,
    )
    rt = make_runtime(tiny_model_dir, encoder, hp)
    rows = skewed_rows()
    run_sft(rt, 0, ds.sft_groups(rows, encoder, steering=True))
    groups = ds.kto_groups(rows, encoder, seed=0)
    before = mean_kl(rt, groups)
    run_hybrid(rt, 1, groups)
    after = mean_kl(rt, groups)
    assert after < before
    assert rt.curves["stage"].count(2.0) == 6
    assert len(rt.curves["steering_kl"]) == len(rt.curves["loss"]) == 12
    assert all(math.isfinite(v) for curve in rt.curves.values() for v in curve)
    # autocast leaves the trained weights (and so AdamW's state) in fp32
    assert {p.dtype for p in rt.model.parameters() if p.requires_grad} == {torch.float32}


def test_bf16_forward_passes_run_in_bf16_and_score_close_to_fp32(tiny_model_dir, encoder):
    groups = ds.kto_groups(skewed_rows(2), encoder, seed=0)
    batch = ds.pack(groups, encoder.pad)
    scores = {}
    for precision in ("fp32", "bf16"):
        rt = make_runtime(tiny_model_dir, encoder, HParams(precision=precision))
        seen = []
        # a matmul's output (the final norm returns fp32 either way)
        mlp = rt.model.get_base_model().get_decoder().layers[0].mlp
        hook = mlp.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        with torch.no_grad():
            scores[precision] = forward(rt, batch)
        hook.remove()
        assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32]
    fp32, bf16 = scores["fp32"], scores["bf16"]
    # the log-softmax is taken in fp32 either way; bf16 only rounds the activations
    assert bf16.logps.dtype == bf16.digit_logps.dtype == torch.float32
    assert not torch.equal(bf16.logps, fp32.logps)
    per_token = (bf16.logps - fp32.logps).abs() / fp32.tokens.clamp(min=1)
    assert per_token.max().item() < 0.01  # 4e-4 seen
    assert torch.allclose(bf16.digit_logps, fp32.digit_logps, atol=0.01)


def test_precision_auto_is_bf16_only_on_a_gpu_that_has_it(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert compute_dtype("auto", cpu) == compute_dtype("fp32", gpu) == torch.float32
    assert compute_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert compute_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert compute_dtype("auto", gpu) == torch.float32


def test_reference_is_computed_once_before_stage2_and_reused(tiny_model_dir, encoder, tmp_path):
    hp = HParams(batch_size=4)
    rt = make_runtime(tiny_model_dir, encoder, hp, tmp_path)
    groups = ds.kto_groups(skewed_rows(4), encoder, seed=0)
    first = frozen_reference(rt, "reference-1", groups)
    assert first.logps.shape == (len(groups), 4)
    with torch.no_grad():
        for p in rt.model.parameters():
            if p.requires_grad:
                p.add_(0.5)  # an update must not change the stored reference
    again = frozen_reference(rt, "reference-1", groups)
    assert torch.equal(first.logps, again.logps)


class Interrupt(Exception):
    pass


def test_an_interrupted_stage_resumes_to_the_same_weights(tiny_model_dir, encoder, tmp_path):
    hp = HParams(lr=1e-2, batch_size=4, epochs=2, max_steps=5, checkpoint_every=2, warmup_steps=0)
    groups = ds.sft_groups(skewed_rows(6), encoder, steering=True)

    straight = make_runtime(tiny_model_dir, encoder, hp, tmp_path / "a")
    train_stage(straight, 0, "s", groups, hp.lr, sft_step(straight))

    broken = make_runtime(tiny_model_dir, encoder, hp, tmp_path / "b")
    calls = {"n": 0}
    inner = sft_step(broken)

    def failing(batch, indices):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Interrupt
        return inner(batch, indices)

    with pytest.raises(Interrupt):
        train_stage(broken, 0, "s", groups, hp.lr, failing)
    assert Checkpoint(tmp_path / "b").load()["step"] == 2
    resumed = make_runtime(tiny_model_dir, encoder, hp, tmp_path / "b")
    train_stage(resumed, 0, "s", groups, hp.lr, sft_step(resumed))
    assert len(resumed.curves["loss"]) == 5
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("method", ["ours", "ours-kl", "ours-kto", "ift", "dpo"])
def test_train_command_writes_a_complete_adapter(tiny_model_dir, tmp_path, monkeypatch, method):
    from trainer.train import main

    monkeypatch.setenv("DISTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTCTL_MODEL", str(tiny_model_dir))
    out = tmp_path / "adapter"
    code = main(
        [
            "--dataset",
            "gender-us-real",
            "--method",
            method,
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--rows-per-occupation",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    assert (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16
    assert not config.get("use_dora") and config.get("bias") == "none"
    assert not config.get("modules_to_save")
    manifest = read_manifest(out)
    assert manifest.method == method and manifest.attribute == "gender"
    assert manifest.dataset == "gender-us-real" and manifest.country == "us"
    assert manifest.target.kind == "real_world" and len(manifest.target.per_occupation) == 14
    assert manifest.base_model_sha256 and manifest.seed == 42
    assert set(manifest.package_versions) >= {"torch", "transformers", "peft", "trl", "distctl"}
    assert manifest.hyperparameters["lr"] == defaults(method).lr
    stages = 2 if method != "ift" else 1
    assert len(manifest.curves["loss"]) == 2 * stages
    if manifest.steering:
        assert manifest.digit_tokens == ["0", "1"]
        assert len(manifest.curves["js_distance"]) == 2 * stages
    assert not (tmp_path / "home" / "runs").exists() or not any(
        (tmp_path / "home" / "runs").iterdir()
    )


def test_train_command_names_versions(tiny_model_dir, tmp_path, monkeypatch):
    from trainer.train import main

    monkeypatch.setenv("DISTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTCTL_MODEL", str(tiny_model_dir))
    args = [
        "--dataset",
        "gender-us-uniform",
        "--method",
        "ift",
        "--name",
        "g",
        "--max-steps",
        "1",
        "--rows-per-occupation",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0 and main(args) == 0
    root = tmp_path / "home" / "adapters" / "g"
    assert sorted(p.name for p in root.iterdir()) == ["v1", "v2"]


def test_hparams_precedence(tmp_path):
    from trainer.hparams import from_args
    from trainer.train import build_parser

    config = tmp_path / "hp.yaml"
    config.write_text("lr: 0.001\nlora-r: 8\nbatch_size: 2\n")
    args = build_parser().parse_args(
        [
            "--dataset",
            "gender-us-uniform",
            "--out",
            "x",
            "--config",
            str(config),
            "--batch-size",
            "4",
            "--no-reward-includes-digit",
        ]
    )
    hp = from_args(args)
    assert (hp.lr, hp.lora_r, hp.batch_size, hp.reward_includes_digit) == (1e-3, 8, 4, False)
    assert hp == replace(HParams(), lr=1e-3, lora_r=8, batch_size=4, reward_includes_digit=False)
    # a method's own defaults sit under the file and the flags
    dpo = build_parser().parse_args(["--dataset", "d", "--out", "x", "--method", "dpo"])
    assert (from_args(dpo).lr, from_args(dpo).stage2_lr) == (2.5e-4, 1e-4)
    args.method = "dpo"
    assert from_args(args).lr == 1e-3 and from_args(args).stage2_lr == 1e-4


def test_hparams_errors(tmp_path):
    from distctl.errors import DistctlError
    from trainer.hparams import load_yaml, validate

    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(DistctlError, match="unknown hyperparameter"):
        load_yaml(bad)
    bad.write_text("lora_r: big\n")
    with pytest.raises(DistctlError, match="lora_r must be int"):
        load_yaml(bad)
    with pytest.raises(DistctlError, match="precision must be one of auto, bf16, fp32") as err:
        validate(replace(HParams(), precision="fp16"))
    assert err.value.field == "precision"


def test_warmup_is_the_shorter_of_150_steps_and_a_tenth():
    assert HParams().warmup(100) == 10
    assert HParams().warmup(5000) == 150


def test_search_tries_scales_on_a_held_out_paraphrase(tiny_model_dir, tmp_path, monkeypatch):
    from trainer.train import main

    monkeypatch.setenv("DISTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTCTL_MODEL", str(tiny_model_dir))
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "--dataset",
                "gender-us-uniform",
                "--method",
                "ours-kl",
                "--out",
                str(out),
                "--max-steps",
                "1",
                "--rows-per-occupation",
                "4",
                "--search",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    hp = read_manifest(out).hyperparameters
    assert [t["lr"] for t in hp["search"]] == [HParams().lr, HParams().lr * 0.5]
    assert all(0 <= t["validation_mae"] <= 0.5 for t in hp["search"])
    assert all(0 < t["answer_mass"] < 1 for t in hp["search"])
    assert hp["lr"] in [t["lr"] for t in hp["search"]]


def test_implied_answers_shares_and_canonical_answer_mass(tiny_model_dir, encoder):
    from trainer.train import implied_answers

    rt = make_runtime(tiny_model_dir, encoder, HParams())
    row = skewed_rows(1)[0]
    for steering in (True, False):
        (implied,) = implied_answers(rt, [row], encoder, steering)
        assert sum(implied.shares.values()) == pytest.approx(1.0, abs=1e-5)
        assert 0 < implied.answer_mass < 1
    # the plain model's mass is the probability of the canonical answers, read directly
    prompt = list(encoder.prompt(row.prompt))
    direct = 0.0
    with torch.no_grad():
        for c in GENDER.classes:
            completion = list(encoder.completion(GENDER.label(c)))
            ids = torch.tensor([prompt + completion])
            logps = torch.log_softmax(rt.model(input_ids=ids).logits[0, :-1].float(), -1)
            positions = range(len(prompt) - 1, ids.shape[1] - 1)
            direct += math.exp(sum(logps[i, ids[0, i + 1]].item() for i in positions))
    assert implied.answer_mass == pytest.approx(direct, rel=1e-3)
