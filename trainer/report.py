"""Scoring and reports of evaluations: pure functions over generation rows (`generations.jsonl`),
so a report can be recomputed, and tested, without an engine.

One evaluation -> `report.json`, `report.md`, `shares.png`, `mae.png`.
The eval-all grid -> `results.json`, `results.md`, `mae_by_method.png`, `shares_<dataset>.png`.
All figures come from `distctl.metrics` (the same tally as the live stream).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from distctl.attributes import get_attribute
from distctl.errors import DistctlError
from distctl.metrics import Evaluation, bootstrap_mae_ci, noise_floor

N_BOOT = 1000

# The columns of results.json, in order (issue 4).
RESULT_FIELDS = (
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
)


def _key(row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return row.get("country"), row.get("occupation")


def build_evaluation(rows: Sequence[Mapping[str, Any]]) -> Evaluation:
    """Tallies grouped by (country, occupation) from generation rows of one attribute."""
    if not rows:
        raise DistctlError("no generations to score", field="generations")
    attributes = {r["attribute"] for r in rows}
    if len(attributes) != 1:
        raise DistctlError(f"generations mix attributes {sorted(attributes)}", field="attribute")
    evaluation = Evaluation(attributes.pop())
    for row in rows:
        evaluation.add(_key(row), row["target"], row["extracted"], row.get("assigned"))
    return evaluation


def score(
    rows: Sequence[Mapping[str, Any]], *, seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """report.json's `overall` and `per_occupation` for a list of generation rows.

    The bootstrap CI and the noise floor are seeded, so the same rows always give the same
    report. The noise floor is the expected MAE of an ideal iid sampler drawing as many answers
    from each occupation's target as that occupation got here.
    """
    evaluation = build_evaluation(rows)
    per_occupation = []
    for entry in evaluation.per_occupation():
        key = (entry["country"], entry["occupation"])
        tally = evaluation.tallies[key]
        alone = Evaluation(evaluation.classes)
        alone.tallies[key] = tally
        tally_dict = entry["tally"]
        per_occupation.append(
            {
                "country": entry["country"],
                "occupation": entry["occupation"],
                **tally_dict,
                "mae_ci": list(bootstrap_mae_ci(alone, n_boot=n_boot, seed=seed)),
                "chi_square_p": entry["chi_square_p"],
                "noise_floor": noise_floor([tally.target], tally.n, seed=seed),
            }
        )
    overall = evaluation.overall()
    overall["mae_ci"] = list(bootstrap_mae_ci(evaluation, n_boot=n_boot, seed=seed))
    overall["noise_floor"] = sum(o["noise_floor"] for o in per_occupation) / len(per_occupation)
    counts = sorted({t.n for t in evaluation.tallies.values()})
    # Generations per occupation: one number when every occupation got the same (the usual case).
    overall["n_rounds"] = counts[0] if len(counts) == 1 else counts
    return {"overall": overall, "per_occupation": per_occupation}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def render_report_md(report: Mapping[str, Any]) -> str:
    config = report.get("config", {})
    overall = report["overall"]
    lines = [f"# Evaluation: {config.get('method', '?')} on {config.get('dataset', '?')}", ""]
    if config:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in config.items()]
        lines.append("")
    lines += [
        "## Overall",
        "",
        "MAE is the unweighted mean over occupations of the mean absolute error of the class "
        "shares (valid answers only), as a fraction; the CI is a seeded bootstrap 95% interval "
        "(generations resampled within each occupation). The noise floor is what an ideal iid "
        "sampler of the same targets scores at the same N.",
        "",
        "| MAE | 95% CI | noise floor | KL | TVD | invalid rate | consistency | occupations | n |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {_fmt(overall['mae'])} | {_ci(overall['mae_ci'])} | {_fmt(overall['noise_floor'])} "
        f"| {_fmt(overall['kl'])} | {_fmt(overall['tvd'])} | {_fmt(overall['invalid_rate'])} "
        f"| {_fmt(overall['consistency'])} | {overall['occupations']} | {overall['n']} |",
        "",
        "## Per occupation",
        "",
        "| country | occupation | n | target | observed | MAE | 95% CI | KL | invalid | "
        "consistency | chi-square p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in report["per_occupation"]:
        target = ", ".join(f"{c} {p:.2f}" for c, p in o["target"].items())
        shares = ", ".join(f"{c} {p:.2f}" for c, p in o["shares"].items())
        lines.append(
            f"| {_fmt(o['country'])} | {_fmt(o['occupation'])} | {o['n']} | {target} | {shares} "
            f"| {_fmt(o['mae'])} | {_ci(o['mae_ci'])} | {_fmt(o['kl'])} "
            f"| {_fmt(o['invalid_rate'])} | {_fmt(o['consistency'])} "
            f"| {_fmt(o['chi_square_p'])} |"
        )
    lines.append("")
    plots = report.get("plots")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def ci_bar(value: float, ci: Sequence[float]) -> tuple[float, float]:
    """Error-bar lengths below and above `value`. The MAE is bounded by 0 and resampling only
    adds noise to it, so near an exact result (exact mode's quotas are not iid draws) the
    bootstrap interval can lie wholly above the point estimate; the bar then starts at it."""
    return max(0.0, value - ci[0]), max(0.0, ci[1] - value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    return plt


def _label(o: Mapping[str, Any], width: int = 40) -> str:
    name = str(o["occupation"] if o["occupation"] is not None else "-")
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_report(report: Mapping[str, Any], out: Path) -> list[str]:
    """shares.png (observed vs target share of each class per occupation) and mae.png (MAE per
    occupation with its CI beside the noise floor); returns the file names."""
    plt = _pyplot()
    occ = report["per_occupation"]
    labels = [_label(o) for o in occ]
    classes = list(occ[0]["target"])
    x = range(len(occ))
    width = max(6.0, 0.45 * len(occ))

    fig, axes = plt.subplots(
        len(classes), 1, figsize=(width, 2.2 * len(classes) + 1.5), sharex=True, squeeze=False
    )
    for ax, cls in zip(axes[:, 0], classes, strict=True):
        ax.bar(x, [o["shares"][cls] for o in occ], color="tab:blue", label="observed")
        ax.scatter(
            x,
            [o["target"][cls] for o in occ],
            color="black",
            marker="_",
            s=300,
            zorder=3,
            label="target",
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel(cls if len(cls) < 16 else cls[:14] + "…")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xticks(list(x), labels, rotation=75, ha="right", fontsize=7)
    fig.suptitle("Observed vs target share per occupation")
    fig.tight_layout()
    fig.savefig(out / "shares.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(width, 4.5))
    maes = [o["mae"] for o in occ]
    err = list(zip(*(ci_bar(o["mae"], o["mae_ci"]) for o in occ), strict=True))
    ax.bar(x, maes, yerr=err, capsize=2, color="tab:orange", label="MAE (95% CI)")
    ax.plot(
        list(x),
        [o["noise_floor"] for o in occ],
        color="black",
        linestyle="--",
        label="iid noise floor",
    )
    ax.set_xticks(list(x), labels, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("MAE")
    ax.legend(fontsize=8)
    ax.set_title(f"MAE per occupation (overall {report['overall']['mae']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "mae.png", dpi=110)
    plt.close(fig)
    return ["shares.png", "mae.png"]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: report.json doubles as the eval-all "cell done" marker


def write_report(
    out: Path, rows: Sequence[Mapping[str, Any]], report: dict[str, Any], *, plots: bool = True
) -> None:
    """generations.jsonl, plots, report.md, and report.json last (its presence means done)."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "generations.jsonl", rows)
    if plots:
        report["plots"] = plot_report(report, out)
    (out / "report.md").write_text(render_report_md(report))
    write_json(out / "report.json", report)


# ---- the grid -------------------------------------------------------------------------------


def result_row(cell: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """One results.json row: the cell's identity and its overall figures."""
    overall = report["overall"]
    row = {k: cell[k] for k in ("dataset", "task", "method", "mode", "pass2", "n_rounds")}
    row.update({k: overall[k] for k in RESULT_FIELDS if k not in row})
    return row


def _method_label(row: Mapping[str, Any]) -> str:
    label = row["method"]
    if row["mode"] != "plain":
        label += f" ({row['mode']})"
    if row["pass2"] != "assistant":
        label += f" [pass 2: {row['pass2']}]"
    return label


def render_results_md(
    cells: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    *,
    header: str = "",
) -> str:
    """Tables like the paper's: one per (task, N), methods x datasets, MAE with its 95% CI.

    `cells` is the whole grid; a cell of the grid without a result reads "missing", a
    combination outside the grid is left blank. Nothing but a measurement fills a cell.
    """
    done = {_ident(r): r for r in results}
    lines = ["# Evaluation results", ""]
    if header:
        lines += [header, ""]
    lines += [
        "MAE (fraction; lower is better) with its seeded bootstrap 95% CI, mean over occupations. "
        "The noise floor row is the MAE an ideal iid sampler of each dataset's targets scores at "
        'the same N: a method at the floor is as calibrated as sampling can show. "missing": '
        "the cell is part of the grid but has not been run.",
        "",
    ]
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["task"], cell["n_rounds"]), []).append(cell)
    for (task, n), group in groups.items():
        datasets = list(dict.fromkeys(c["dataset"] for c in group))
        methods = list(dict.fromkeys(_method_label(c) for c in group))
        lines += [f"## {task} task, N = {n} per occupation", ""]
        lines += ["| method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
        by_label = {(c["dataset"], _method_label(c)): c for c in group}
        for label in methods:
            cols = []
            for d in datasets:
                cell = by_label.get((d, label))
                result = done.get(_ident(cell)) if cell else None
                if cell is None:
                    cols.append("")
                elif result is None:
                    cols.append("missing")
                else:
                    cols.append(f"{result['mae']:.3f} {_ci(result['mae_ci'])}")
            lines.append(f"| {label} | " + " | ".join(cols) + " |")
        floors = []
        for d in datasets:
            measured = [done[_ident(c)] for c in group if c["dataset"] == d and _ident(c) in done]
            floors.append(_fmt(measured[0]["noise_floor"]) if measured else "")
        lines += ["| *iid noise floor* | " + " | ".join(floors) + " |", ""]
        lines += _secondary_table(group, done, datasets, methods)
    lines += _relative_to_ift(cells, done)
    missing = [c for c in cells if _ident(c) not in done]
    lines += ["## Missing cells", ""]
    if missing:
        lines += [
            f"- {c['dataset']} / {c['task']} / {_method_label(c)} / N = {c['n_rounds']}"
            for c in missing
        ]
    else:
        lines.append("None: every cell of the grid was measured.")
    lines.append("")
    return "\n".join(lines)


def _secondary_table(
    group: Sequence[Mapping[str, Any]],
    done: Mapping[tuple, Mapping[str, Any]],
    datasets: Sequence[str],
    methods: Sequence[str],
) -> list[str]:
    rows = [done[_ident(c)] for c in group if _ident(c) in done]
    if not rows:
        return []
    lines = [
        "KL(target || observed) / invalid rate / steering consistency:",
        "",
        "| method | " + " | ".join(datasets) + " |",
        "|---" * (len(datasets) + 1) + "|",
    ]
    by = {(r["dataset"], _method_label(r)): r for r in rows}
    for label in methods:
        cols = []
        for d in datasets:
            r = by.get((d, label))
            cols.append(
                ""
                if r is None
                else f"{_fmt(r['kl'])} / {_fmt(r['invalid_rate'], 2)} / {_fmt(r['consistency'], 2)}"
            )
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return [*lines, ""]


def _relative_to_ift(
    cells: Sequence[Mapping[str, Any]], done: Mapping[tuple, Mapping[str, Any]]
) -> list[str]:
    """The paper's headline comparison (ours lowers MAE ~37% relative to IFT), from measured
    cells only."""
    lines = []
    for cell in cells:
        if (cell["method"], cell["mode"], cell["pass2"]) != ("ours", "calibrated", "assistant"):
            continue
        ift = {**cell, "method": "ift", "mode": "plain"}
        ours_r, ift_r = done.get(_ident(cell)), done.get(_ident(ift))
        if ours_r and ift_r and ift_r["mae"] > 0:
            change = (ours_r["mae"] - ift_r["mae"]) / ift_r["mae"]
            lines.append(
                f"| {cell['dataset']} | {cell['task']} | {ift_r['mae']:.3f} | "
                f"{ours_r['mae']:.3f} | {100 * change:+.0f}% |"
            )
    if not lines:
        return []
    return [
        "## ours (calibrated) relative to IFT",
        "",
        "| dataset | task | IFT MAE | ours MAE | change |",
        "|---|---|---|---|---|",
        *lines,
        "",
    ]


def _ident(row: Mapping[str, Any] | None) -> tuple:
    if row is None:
        return ()
    return tuple(row[k] for k in ("dataset", "task", "method", "mode", "pass2", "n_rounds"))


def plot_results(
    results: Sequence[Mapping[str, Any]],
    out: Path,
    shares: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """mae_by_method.png (MAE per method and dataset with CIs, one panel per task and N) and,
    given `shares` (method label -> report of one real-world dataset), shares_<dataset>.png."""
    plt = _pyplot()
    files: list[str] = []
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["task"], r["n_rounds"]), []).append(r)
    if groups:
        fig, axes = plt.subplots(len(groups), 1, figsize=(11, 4.2 * len(groups)), squeeze=False)
        for ax, ((task, n), rows) in zip(axes[:, 0], groups.items(), strict=True):
            datasets = list(dict.fromkeys(r["dataset"] for r in rows))
            labels = list(dict.fromkeys(_method_label(r) for r in rows))
            width = 0.8 / len(labels)
            for i, label in enumerate(labels):
                xs, ys, lo, hi = [], [], [], []
                for j, d in enumerate(datasets):
                    for r in rows:
                        if r["dataset"] == d and _method_label(r) == label:
                            xs.append(j + (i - (len(labels) - 1) / 2) * width)
                            ys.append(r["mae"])
                            below, above = ci_bar(r["mae"], r["mae_ci"])
                            lo.append(below)
                            hi.append(above)
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label)
            floors = {r["dataset"]: r["noise_floor"] for r in rows}
            ax.scatter(
                range(len(datasets)),
                [floors[d] for d in datasets],
                color="black",
                marker="_",
                s=600,
                zorder=3,
                label="iid noise floor",
            )
            ax.set_xticks(range(len(datasets)), datasets, fontsize=8)
            ax.set_ylabel("MAE")
            ax.set_title(f"{task} task, N = {n}")
            ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(out / "mae_by_method.png", dpi=110)
        plt.close(fig)
        files.append("mae_by_method.png")
    if shares:
        files.append(_plot_real_world_shares(plt, shares, out))
    return files


def _plot_real_world_shares(plt, shares: Mapping[str, Mapping[str, Any]], out: Path) -> str:
    """Share of one class per occupation, target vs each method (real-world targets are
    gender-only, so one class, the second, says all)."""
    first = next(iter(shares.values()))
    dataset = first.get("config", {}).get("dataset", "dataset")
    occ = first["per_occupation"]
    cls = get_attribute(first.get("config", {}).get("attribute", "gender")).classes[1]
    order = sorted(range(len(occ)), key=lambda i: occ[i]["target"][cls])
    names = [_label(occ[i]) for i in order]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(occ)), 5))
    ax.plot(
        range(len(order)),
        [occ[i]["target"][cls] for i in order],
        color="black",
        linewidth=2,
        label="target (real world)",
    )
    for label, report in shares.items():
        by_name = {_label(o): o for o in report["per_occupation"]}
        ys = [by_name[n]["shares"][cls] if n in by_name else math.nan for n in names]
        ax.plot(range(len(order)), ys, marker="o", linestyle="", label=label)
    ax.set_xticks(range(len(order)), names, rotation=75, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share {cls}")
    ax.set_title(f"{dataset}: observed vs target share of {cls}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"shares_{dataset}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
