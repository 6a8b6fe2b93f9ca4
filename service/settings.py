"""The service's settings: the shared configuration plus what only HTTP needs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from distctl.config import Settings


class ServiceSettings(Settings):
    """`DISTCTL_*` variables; the engine's come from `distctl.config.Settings`."""

    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535)
    max_n: int = Field(default=100, ge=1, description="largest n a request may ask for")
    max_concurrent: int = Field(
        default=8, ge=1, description="requests served at once; more get 429"
    )
    # SecretStr, so that printing the settings never shows a key
    api_keys: SecretStr | None = Field(
        default=None, description="comma-separated key:scope (scope generate or admin)"
    )
    api_keys_file: Path | None = Field(default=None, description="one key:scope a line")
    allow_unauthenticated: bool = Field(
        default=False, description="serve without keys on a non-loopback address"
    )
