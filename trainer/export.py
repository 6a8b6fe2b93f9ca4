"""The adapter folder: PEFT files vLLM loads unchanged, plus the manifest, written atomically
through `distctl.manifest.write_adapter`."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from distctl.manifest import AdapterVersion, Manifest, write_adapter

PACKAGES = ("torch", "transformers", "peft", "trl", "distctl")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_lora(model: torch.nn.Module, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors; the base model's path is recorded as
    the manifest's, not as a hub id."""
    model.save_pretrained(str(folder), safe_serialization=True)


def export(
    model: torch.nn.Module,
    manifest: Manifest,
    *,
    root: Path | None = None,
    name: str | None = None,
    out: Path | None = None,
) -> AdapterVersion:
    return write_adapter(
        lambda folder: save_lora(model, folder), manifest, root=root, name=name, out=out
    )
