"""The one configuration object (DESIGN.md "Configuration"); the service extends it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTCTL_", extra="ignore")

    home: Path = Field(
        default=Path("~/.cache/distctl"), description="cache folder: model, adapters, state"
    )
    model: Path | None = Field(
        default=None, description="Hugging Face model folder; default the prepared SmolLM2"
    )
    adapter_root: Path | None = Field(default=None, description="default $DISTCTL_HOME/adapters")
    max_loras: int = Field(default=4, ge=1, description="adapters resident in one engine batch")
    max_lora_rank: int = Field(default=32, ge=1)
    max_model_len: int = Field(default=1024, ge=64)
    kv_cache_gb: float = Field(default=2.0, gt=0, description="KV cache size in GiB")
    tensor_parallel_size: int = Field(default=1, ge=1)
    dtype: str = Field(
        default="auto",
        description="engine weights dtype; auto = float32 on CPU, the model's own on GPU",
    )
    cpu_reserved_cores: int = Field(
        default=0,
        ge=0,
        description="CPU cores vLLM keeps free of its compute threads (it reserves 1 by default)",
    )

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.home = self.home.expanduser()
        if self.model is None:
            self.model = self.home / "models" / DEFAULT_MODEL_DIRNAME
        self.model = self.model.expanduser()
        if self.adapter_root is None:
            self.adapter_root = self.home / "adapters"
        self.adapter_root = self.adapter_root.expanduser()
        return self

    @property
    def model_path(self) -> Path:
        assert self.model is not None
        return self.model

    @property
    def adapters_path(self) -> Path:
        assert self.adapter_root is not None
        return self.adapter_root

    @property
    def uses_default_model(self) -> bool:
        return self.model_path == self.home / "models" / DEFAULT_MODEL_DIRNAME
