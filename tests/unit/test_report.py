"""trainer/report.py on a small synthetic set of generations, against hand-computed figures."""

import json
import math

import pytest

from distctl.errors import DistctlError
from trainer.report import (
    RESULT_FIELDS,
    ci_bar,
    plot_results,
    render_report_md,
    render_results_md,
    result_row,
    score,
    write_report,
)

UNIFORM = {"male": 0.5, "female": 0.5}
SKEWED = {"male": 0.8, "female": 0.2}


def _row(occupation, target, extracted, assigned=None):
    return {
        "dataset": "synthetic",
        "task": "attribute",
        "method": "zero-shot",
        "mode": "plain",
        "adapter": None,
        "prompt": f"about {occupation}",
        "occupation": occupation,
        "country": "us",
        "attribute": "gender",
        "target": target,
        "assigned": assigned,
        "extracted": extracted,
        "text": extracted or "unsure",
        "seed": 0,
    }


def synthetic_rows():
    # A: 3 male, 1 female, 1 invalid against uniform -> shares .75/.25
    a = [_row("nurses", UNIFORM, e) for e in ("male", "male", "male", "female", None)]
    # B: 1 male, 3 female against .8/.2 -> shares .25/.75; two rows were steered to male
    b = [
        _row("pilots", SKEWED, "male", "male"),
        _row("pilots", SKEWED, "female", "male"),
        _row("pilots", SKEWED, "female"),
        _row("pilots", SKEWED, "female"),
    ]
    return a + b


def test_score_matches_hand_computed_figures():
    report = score(synthetic_rows(), seed=3)
    occ = {o["occupation"]: o for o in report["per_occupation"]}
    a, b = occ["nurses"], occ["pilots"]
    assert a["shares"] == {"male": 0.75, "female": 0.25}
    assert a["mae"] == pytest.approx(0.25)
    assert a["kl"] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert a["tvd"] == pytest.approx(0.25)
    assert a["invalid_rate"] == pytest.approx(0.2)
    assert a["consistency"] is None
    assert b["mae"] == pytest.approx(0.55)
    assert b["kl"] == pytest.approx(0.8 * math.log(0.8 / 0.25) + 0.2 * math.log(0.2 / 0.75))
    assert b["consistency"] == pytest.approx(0.5)

    overall = report["overall"]
    assert overall["mae"] == pytest.approx((0.25 + 0.55) / 2)
    assert overall["kl"] == pytest.approx((a["kl"] + b["kl"]) / 2)
    assert overall["tvd"] == pytest.approx(0.4)
    assert overall["invalid_rate"] == pytest.approx(1 / 9)  # pooled over all generations
    assert overall["consistency"] == pytest.approx(0.5)
    assert overall["occupations"] == 2 and overall["n"] == 9
    assert overall["n_rounds"] == [4, 5]  # not one number: the occupations got different N
    assert overall["noise_floor"] == pytest.approx((a["noise_floor"] + b["noise_floor"]) / 2)


def test_bootstrap_ci_is_seeded_and_brackets_the_mae():
    first, again = score(synthetic_rows(), seed=7), score(synthetic_rows(), seed=7)
    assert first == again
    lo, hi = first["overall"]["mae_ci"]
    assert lo <= first["overall"]["mae"] <= hi
    assert 0 <= lo < hi <= 1
    for o in first["per_occupation"]:
        assert o["mae_ci"][0] <= o["mae"] <= o["mae_ci"][1]


def test_noise_floor_of_a_uniform_binary_target_is_near_its_expectation():
    # n iid fair coin flips: MAE = E|k/n - 1/2|, k ~ Binomial(n, 1/2); 0.0398 at n = 100
    # (DESIGN.md's "about 0.03-0.04"); the simulation is within sampling error of it.
    rows = [_row("x", UNIFORM, "male" if i % 2 else "female") for i in range(100)]
    report = score(rows)
    exact = sum(math.comb(100, k) * abs(k / 100 - 0.5) for k in range(101)) / 2**100
    assert report["overall"]["noise_floor"] == pytest.approx(exact, abs=0.003)
    assert report["overall"]["mae"] == 0.0
    assert report["overall"]["n_rounds"] == 100


def test_an_occupation_without_a_valid_answer_scores_one_over_k():
    report = score([_row("x", UNIFORM, None), _row("x", UNIFORM, None)])
    assert report["overall"]["mae"] == pytest.approx(0.5)
    assert report["overall"]["kl"] is None
    assert report["overall"]["invalid_rate"] == 1.0


def test_score_refuses_empty_and_mixed_rows():
    with pytest.raises(DistctlError):
        score([])
    other = {**_row("x", UNIFORM, "male"), "attribute": "sentiment"}
    with pytest.raises(DistctlError):
        score([_row("x", UNIFORM, "male"), other])


def test_write_report_files(tmp_path):
    rows = synthetic_rows()
    report = score(rows)
    report["config"] = {"dataset": "synthetic", "method": "zero-shot", "attribute": "gender"}
    write_report(tmp_path, rows, report)
    assert {p.name for p in tmp_path.iterdir()} == {
        "generations.jsonl",
        "report.json",
        "report.md",
        "shares.png",
        "mae.png",
    }
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["overall"]) >= {
        "mae",
        "mae_ci",
        "kl",
        "tvd",
        "invalid_rate",
        "consistency",
        "noise_floor",
        "n_rounds",
    }
    assert saved["plots"] == ["shares.png", "mae.png"]
    for png in ("shares.png", "mae.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| 0.400 |" in md and "pilots" in md and "![mae.png](mae.png)" in md


def test_render_report_md_without_config():
    md = render_report_md(score(synthetic_rows()))
    assert md.startswith("# Evaluation")


def _cell(dataset, method, mode="plain"):
    return {
        "dataset": dataset,
        "task": "attribute",
        "method": method,
        "mode": mode,
        "pass2": "assistant",
        "n_rounds": 100,
    }


def test_results_md_names_missing_cells_and_never_fills_them():
    cells = [
        _cell("d1", "zero-shot"),
        _cell("d1", "ift"),
        _cell("d2", "zero-shot"),
        _cell("d1", "ours", "calibrated"),
        _cell("d2", "ours", "exact"),
    ]
    report = score(synthetic_rows(), seed=1)
    results = [
        result_row(cells[0], report),
        result_row(cells[1], report),
        result_row(cells[3], {**report, "overall": {**report["overall"], "mae": 0.2}}),
    ]
    assert list(results[0]) == list(RESULT_FIELDS)
    md = render_results_md(cells, results)
    table = md.split("## attribute task, N = 100 per occupation")[1]
    assert "| zero-shot | 0.400 [" in table
    assert "missing" in table.split("| zero-shot |")[1].splitlines()[0]  # d2 not run
    # ours (exact) exists only for d2 (not run) and is blank for d1
    assert "| ours (exact) |  | missing |" in table
    assert "| d1 | attribute | 0.400 | 0.200 | -50% |" in md
    missing = md.split("## Missing cells")[1]
    assert "d2 / attribute / zero-shot / N = 100" in missing
    assert "d2 / attribute / ours (exact) / N = 100" in missing
    assert "d1 / attribute / zero-shot" not in missing


def test_a_ci_wholly_above_its_mae_plots_from_the_point():
    # exact mode: the quotas hit the target, the iid bootstrap only adds error (seen: MAE 0.008,
    # CI [0.022, 0.049])
    assert ci_bar(0.008, [0.022, 0.049]) == pytest.approx((0.0, 0.041))
    assert ci_bar(0.2, [0.15, 0.3]) == pytest.approx((0.05, 0.1))


def test_results_plot_accepts_such_a_cell(tmp_path):
    report = score(synthetic_rows(), seed=1)
    exact = {**report, "overall": {**report["overall"], "mae": 0.001, "mae_ci": [0.02, 0.05]}}
    rows = [result_row(_cell("d1", "ours", "exact"), exact), result_row(_cell("d1", "ift"), report)]
    files = plot_results(rows, tmp_path)
    assert files and all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in files)
