"""Configuration defaults and the command line's error handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from distctl import cli
from distctl.basemodel import require_model
from distctl.config import Settings
from distctl.errors import DistctlError


def test_paths_derive_from_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTCTL_HOME", str(tmp_path))
    monkeypatch.delenv("DISTCTL_MODEL", raising=False)
    monkeypatch.delenv("DISTCTL_ADAPTER_ROOT", raising=False)
    settings = Settings()
    assert settings.adapters_path == tmp_path / "adapters"
    assert settings.model_path == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert settings.uses_default_model


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTCTL_MODEL", str(tmp_path / "m"))
    monkeypatch.setenv("DISTCTL_MAX_LORAS", "3")
    settings = Settings()
    assert settings.model_path == tmp_path / "m" and settings.max_loras == 3
    assert not settings.uses_default_model


def test_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DistctlError, match="no model at"):
        require_model(Settings(model=tmp_path / "nothing"))


def test_cli_prints_one_line_for_bad_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISTCTL_MODEL", str(tmp_path / "missing"))
    assert cli.main(["model", "prepare"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distctl: error:") and "\n" not in err


def test_cli_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_broken_model_folder_is_one_clear_error(tmp_path: Path) -> None:
    from distctl.basemodel import prepare_base_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DistctlError, match="does not load"):
        prepare_base_model(Settings(model=tmp_path), say=lambda _: None)
