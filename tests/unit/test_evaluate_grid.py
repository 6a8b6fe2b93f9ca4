"""trainer/grid.py (distctl eval-all) without an engine: the grid, resumability, training of
missing adapters, and the combined report."""

import json
import sys
import types

import pytest

from distctl.config import Settings
from distctl.errors import DistctlError
from distctl.manifest import latest_version
from tests.unit.test_evaluate_run import FakeGenerator, make_adapter
from trainer import grid


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISTCTL_ADAPTER_ROOT", raising=False)
    return tmp_path / "home"


def test_the_grid_of_issue_4():
    core, extended = grid.core_cells(), grid.extended_cells()
    assert len(core) == 6 * 5
    assert {(c.method, c.mode) for c in core} == {
        ("zero-shot", "plain"),
        ("prompt", "plain"),
        ("ift", "plain"),
        ("ours", "calibrated"),
        ("ours", "exact"),
    }
    assert all(c.task == "attribute" and c.n_rounds == 100 for c in core)
    assert len(extended) == 6 + 2 * 3 + 2 * 3
    story = [c for c in extended if c.task == "story"]
    assert {c.dataset for c in story} == {"gender-us-real", "sentiment-us-uniform"}
    assert all(c.n_rounds == 30 for c in story)
    assert sum(c.pass2 == "user-turn" for c in extended) == 2
    cells = grid.grid()
    assert len({c.id for c in cells}) == len(cells)
    # ours calibrated and ours exact share one adapter; base-model methods need none
    by_id = {(c.dataset, c.method, c.mode): c for c in core}
    assert by_id["gender-us-real", "ours", "exact"].adapter_name == "gender-us-real-attribute-ours"
    assert by_id["gender-us-real", "zero-shot", "plain"].adapter_name is None


def test_select():
    cells = grid.grid()
    assert len(grid.select(cells, "core")) == 30
    picked = grid.select(cells, None, ["gender-us-real"], ["zero-shot"])
    assert {(c.task, c.n_rounds) for c in picked} == {("attribute", 100), ("story", 30)}
    # the pass-2 variant without the story cell of the same method and dataset
    picked = grid.select(cells, "extended", ["gender-us-real"], ["ours"], ["attribute"])
    assert [(c.task, c.pass2) for c in picked] == [("attribute", "user-turn")]
    with pytest.raises(DistctlError, match="task"):
        grid.select(cells, None, tasks=["poem"])
    with pytest.raises(DistctlError):
        grid.select(cells, None, ["nope"])
    with pytest.raises(DistctlError):
        grid.select(cells, "most")


def test_ensure_adapter_trains_what_is_missing_once(home, monkeypatch):
    settings = Settings()
    calls = []

    def fake_train(argv):
        calls.append(argv)
        make_adapter(settings.adapters_path, method=argv[argv.index("--method") + 1])
        return 0

    monkeypatch.setitem(sys.modules, "trainer.train", types.SimpleNamespace(main=fake_train))
    cell = grid.Cell("gender-us-real", "attribute", "ours", "calibrated", "assistant", 4, "core")
    with pytest.raises(DistctlError, match="missing"):
        grid.ensure_adapter(settings, cell, train=False)
    version, _ = grid.ensure_adapter(settings, cell, train=True)
    assert calls == [
        [
            "--dataset",
            "gender-us-real",
            "--task",
            "attribute",
            "--method",
            "ours",
            "--name",
            "gender-us-real-attribute-ours",
        ]
    ]
    assert version == latest_version(settings.adapters_path, cell.adapter_name)
    grid.ensure_adapter(settings, cell, train=True)
    assert len(calls) == 1


def test_eval_all_is_resumable_and_names_missing_cells(home, tmp_path, monkeypatch):
    runs = []

    async def fake_engine(settings, cells, adapters):
        runs.append([c.id for c in cells])
        return await grid.run_cells(settings, cells, adapters, FakeGenerator(), progress=False)

    monkeypatch.setattr(grid, "_run_with_engine", fake_engine)
    out = tmp_path / "results"
    argv = [
        "--rounds",
        "2",
        "--datasets",
        "gender-uk-real,gender-us-real",
        "--methods",
        "zero-shot,prompt",
        "--only",
        "core",
        "--out",
        str(out),
    ]
    assert grid.main_all(argv) == 0
    assert len(runs) == 1 and len(runs[0]) == 4

    settings = Settings()
    cell = grid.Cell("gender-us-real", "attribute", "zero-shot", "plain", "assistant", 2, "core")
    state = json.loads((grid.cell_dir(settings, cell) / "state.json").read_text())
    assert state["generation_s"] >= 0 and state["adapter_train_s"] is None
    assert (grid.cell_dir(settings, cell) / "generations.jsonl").is_file()

    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4
    assert set(results[0]) == {
        "dataset",
        "task",
        "method",
        "mode",
        "pass2",
        "n_rounds",
        "mae",
        "mae_ci",
        "kl",
        "tvd",
        "invalid_rate",
        "consistency",
        "noise_floor",
    }
    md = (out / "results.md").read_text()
    assert "missing" in md and "race-us-uniform / attribute / ift / N = 2" in md
    assert (out / "mae_by_method.png").is_file()
    assert (out / "shares_gender-us-real.png").is_file()
    assert (out / "cells" / cell.id / "report.json").is_file()

    # a second run skips the done cells and starts no engine
    assert grid.main_all(argv) == 0
    assert len(runs) == 1


def test_eval_all_records_a_cell_it_cannot_run(home, tmp_path, monkeypatch):
    async def fake_engine(settings, cells, adapters):
        return await grid.run_cells(settings, cells, adapters, FakeGenerator(), progress=False)

    monkeypatch.setattr(grid, "_run_with_engine", fake_engine)
    argv = [
        "--rounds",
        "2",
        "--datasets",
        "gender-us-real",
        "--methods",
        "ift,zero-shot",
        "--only",
        "core",
        "--no-train",
        "--out",
        str(tmp_path / "r"),
    ]
    assert grid.main_all(argv) == 1
    cell = grid.Cell("gender-us-real", "attribute", "ift", "plain", "assistant", 2, "core")
    error = json.loads((grid.cell_dir(Settings(), cell) / "error.json").read_text())
    assert error["stage"] == "train" and "missing" in error["error"]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [r["method"] for r in results] == ["zero-shot"]


def test_timing_counts_a_shared_adapters_training_once(home):
    settings = Settings()
    cells = [
        grid.Cell("gender-us-real", "attribute", "ours", mode, "assistant", 2, "core")
        for mode in ("calibrated", "exact")
    ]
    for cell, gen in zip(cells, (10.0, 20.0), strict=True):
        folder = grid.cell_dir(settings, cell)
        folder.mkdir(parents=True)
        state = {"adapter": "/a/ours/v1", "adapter_train_s": 300.0, "generation_s": gen}
        (folder / "state.json").write_text(json.dumps(state))
    assert grid._timing(settings, cells) == {"generation_s": 30.0, "train_s": 300.0}
