"""The adapter folder and its manifest (DESIGN.md "Adapter folder").

`<root>/<name>/v<N>/` holds the PEFT files and `distctl.json`. A version folder only ever
appears complete: it is written under a temporary name beside its final place and renamed
into place in one step, so a crashed run never leaves a folder that looks finished.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from distctl.errors import DistctlError

MANIFEST_FILE = "distctl.json"
SCHEMA_VERSION = 1
STEERING_METHODS = ("ours", "ours-kl", "ours-kto")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v([0-9]+)$")

TargetKind = Literal["uniform", "real_world", "explicit"]


class OccupationTarget(BaseModel):
    country: str
    occupation: str
    target: dict[str, float]


class TargetRecord(BaseModel):
    """What the adapter was trained to reproduce: the kind and the values per occupation."""

    kind: TargetKind
    values: dict[str, float] | None = Field(
        default=None, description="the one target when it is the same for every prompt"
    )
    per_occupation: list[OccupationTarget] = Field(default_factory=list)


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    name: str = ""
    version: int = 0
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    base_model: str
    base_model_sha256: str
    dataset: str
    country: str | None = None
    attribute: str
    classes: list[str]
    digit_tokens: list[str]
    task: str
    target: TargetRecord
    method: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    curves: dict[str, list[float]] = Field(default_factory=dict)
    seed: int
    package_versions: dict[str, str] = Field(default_factory=dict)
    eval: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def steering(self) -> bool:
        """Whether the adapter's first token is a steering digit (the paper's method)."""
        return self.method in STEERING_METHODS


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    path: Path
    manifest: Manifest


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise DistctlError(
            f"adapter name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="adapter",
        )
    return name


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise DistctlError(f"{folder} is not an adapter folder: no {MANIFEST_FILE}") from exc
    except ValidationError as exc:
        raise DistctlError(f"{path} is not a valid manifest: {exc.errors()[0]['msg']}") from exc


def _versions(root: Path, name: str) -> list[int]:
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _VERSION_RE.match(child.name)
        if match and (child / MANIFEST_FILE).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def load_version(root: Path, name: str, version: int) -> AdapterVersion:
    path = Path(root) / name / f"v{version}"
    return AdapterVersion(name, version, path, read_manifest(path))


def latest_version(root: Path, name: str) -> AdapterVersion | None:
    versions = _versions(root, check_name(name))
    return load_version(root, name, versions[-1]) if versions else None


def list_adapters(root: Path) -> list[AdapterVersion]:
    """The newest complete version of every adapter under root, by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and _NAME_RE.match(child.name):
            latest = latest_version(root, child.name)
            if latest is not None:
                found.append(latest)
    return found


def _write_manifest_file(folder: Path, manifest: Manifest) -> None:
    tmp = folder / f".{MANIFEST_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST_FILE)


def write_adapter(
    save: Callable[[Path], None],
    manifest: Manifest,
    *,
    root: Path | None = None,
    name: str | None = None,
    out: Path | None = None,
) -> AdapterVersion:
    """Write an adapter atomically: the next version of `name` under `root`, or exactly `out`.

    `save(folder)` writes the PEFT files into a fresh folder; the manifest is added last and
    the folder renamed into place, so readers never see a half-written version.
    """
    if (out is None) == (root is None or name is None):
        raise DistctlError("give either an adapter root and a name, or an output folder")
    if out is not None:
        out = Path(out)
        final_name, version, parent = out.name, 1, out.parent
    else:
        assert root is not None and name is not None
        parent = Path(root) / check_name(name)
        final_name, version = name, None
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        save(staging)
        while True:
            if out is None:
                existing = _versions(Path(root), final_name)  # type: ignore[arg-type]
                version = (existing[-1] if existing else 0) + 1
                target = parent / f"v{version}"
            else:
                target = out
            assert version is not None
            _write_manifest_file(
                staging, manifest.model_copy(update={"name": final_name, "version": version})
            )
            if out is not None and target.exists():
                shutil.rmtree(target)
            try:
                staging.rename(target)
                break
            except OSError:
                if out is not None:
                    raise
                # another writer took this version number first; take the next one
                continue
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return AdapterVersion(final_name, version, target, read_manifest(target))


def append_eval(folder: Path, result: dict[str, Any]) -> Manifest:
    """Append one evaluation result to an adapter's manifest, atomically."""
    manifest = read_manifest(folder)
    updated = manifest.model_copy(update={"eval": [*manifest.eval, result]})
    _write_manifest_file(Path(folder), updated)
    return updated
