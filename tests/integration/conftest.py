"""Session fixtures for tests on the real vLLM engine and the prepared base model.

One engine serves the whole session (it takes about 30 s to start). Adapters for the mechanics
of LoRA serving are small random LoRAs made with PEFT and given a manifest: their quality is
the trainer's business, not these tests'.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
import pytest_asyncio

from distctl.attributes import get_attribute
from distctl.basemodel import prepare_base_model, weights_sha256
from distctl.config import Settings
from distctl.engine import build_engine, load_tokenizer
from distctl.generation import Generator
from distctl.manifest import AdapterVersion, Manifest, TargetRecord, write_adapter
from distctl.targets import resolve_target

pytestmark = pytest.mark.integration
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="session")
def settings(adapter_root: Path) -> Settings:
    base = Settings()
    prepare_base_model(base)
    return Settings(
        max_model_len=512, kv_cache_gb=1, max_loras=2, max_lora_rank=16, adapter_root=adapter_root
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(settings: Settings) -> AsyncIterator[object]:
    llm = build_engine(settings)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="session")
def tokenizer(settings: Settings) -> object:
    return load_tokenizer(settings)


@pytest.fixture(scope="session")
def generator(engine: object, tokenizer: object) -> Generator:
    return Generator(engine, tokenizer)  # type: ignore[arg-type]


MakeAdapter = Callable[..., AdapterVersion]


@pytest.fixture(scope="session")
def make_adapter(settings: Settings, tokenizer: object) -> MakeAdapter:
    """Write a random LoRA (r 8 on q/v) with a manifest as the next version of `name`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sha = weights_sha256(settings.model_path)

    def make(
        name: str,
        attribute: str = "gender",
        task: str = "attribute",
        method: str = "ours",
        target: str | Mapping[str, float] = "uniform",
        country: str | None = None,
        seed: int = 0,
        scale: float = 1.0,
    ) -> AdapterVersion:
        import torch

        attr = get_attribute(attribute)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(settings.model_path)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for param_name, param in peft_model.named_parameters():
                if "lora_B" in param_name:
                    param.mul_(scale)
        kind = target if isinstance(target, str) else "explicit"
        values = None if kind == "real_world" else resolve_target(attr, target)
        manifest = Manifest(
            base_model=str(settings.model_path),
            base_model_sha256=sha,
            dataset="test-fixture",
            country=country,
            attribute=attr.name,
            classes=list(attr.classes),
            digit_tokens=[str(i) for i in range(attr.k)],
            task=task,
            target=TargetRecord(kind=kind, values=values),
            method=method,
            hyperparameters={"r": 8, "random": True, "scale": scale},
            seed=seed,
        )
        return write_adapter(
            peft_model.save_pretrained, manifest, root=settings.adapters_path, name=name
        )

    return make
