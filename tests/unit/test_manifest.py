"""Adapter folders: versions, atomic writes, reading, eval appends."""

from __future__ import annotations

from pathlib import Path

import pytest

from distctl.errors import DistctlError
from distctl.manifest import (
    MANIFEST_FILE,
    Manifest,
    TargetRecord,
    append_eval,
    latest_version,
    list_adapters,
    read_manifest,
    write_adapter,
)


def manifest(method: str = "ours") -> Manifest:
    return Manifest(
        base_model="m",
        base_model_sha256="0" * 64,
        dataset="gender-us-uniform",
        country="us",
        attribute="gender",
        classes=["male", "female"],
        digit_tokens=["0", "1"],
        task="attribute",
        target=TargetRecord(kind="uniform", values={"male": 0.5, "female": 0.5}),
        method=method,
        seed=42,
    )


def save(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{}")


def test_versions_increase_and_newest_is_latest(tmp_path: Path) -> None:
    first = write_adapter(save, manifest(), root=tmp_path, name="nurse")
    second = write_adapter(save, manifest(), root=tmp_path, name="nurse")
    assert (first.version, second.version) == (1, 2)
    assert second.path == tmp_path / "nurse" / "v2"
    latest = latest_version(tmp_path, "nurse")
    assert latest is not None and latest.version == 2 and latest.manifest.name == "nurse"
    assert [a.version for a in list_adapters(tmp_path)] == [2]
    assert latest.manifest.steering


def test_failed_save_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def crash(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_adapter(crash, manifest(), root=tmp_path, name="nurse")
    assert latest_version(tmp_path, "nurse") is None
    assert list((tmp_path / "nurse").iterdir()) == []


def test_out_folder_is_written_exactly(tmp_path: Path) -> None:
    out = tmp_path / "exact"
    written = write_adapter(save, manifest("ift"), out=out)
    assert written.path == out and (out / MANIFEST_FILE).is_file()
    assert not written.manifest.steering


def test_append_eval_keeps_the_manifest(tmp_path: Path) -> None:
    written = write_adapter(save, manifest(), root=tmp_path, name="nurse")
    append_eval(written.path, {"dataset": "gender-us-uniform", "mae": 0.1})
    append_eval(written.path, {"dataset": "gender-us-uniform", "mae": 0.05})
    again = read_manifest(written.path)
    assert [e["mae"] for e in again.eval] == [0.1, 0.05]
    assert again.version == 1 and again.target.kind == "uniform"


def test_bad_names_and_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DistctlError, match="adapter name"):
        write_adapter(save, manifest(), root=tmp_path, name="../escape")
    with pytest.raises(DistctlError, match="not an adapter folder"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text('{"name": 3}')
    with pytest.raises(DistctlError, match="not a valid manifest"):
        read_manifest(tmp_path)
