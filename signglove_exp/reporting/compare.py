"""Comparison reports over a set of runs: statistics per model, paired tests, confusion figures.

Runs arrive as plain dicts (params, metrics, tags, confusion matrix), read by the tracking room; this
module never imports it. The same report is written at the end of every multirun.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from signglove_exp.metrics import summarise
from signglove_exp.reporting import figures
from signglove_exp.reporting.calibration import calibration_section

METRICS = [
    ("test/acc", "test acc"),
    ("test/balanced_acc", "test bal. acc"),
    ("test/f1_macro", "test macro F1"),
]
SHARED_CPU = "signglove.cpu_shared"  # tag of a run trained beside other jobs: its timings are inflated
# params that differ between runs of one sweep without making them different experiments
RUN_SPECIFIC = ("tracking.run_name", "overrides", "model.", "data.n_")


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(int(value), spec) if spec in ("d", ",") else format(value, spec)


def sweep_table(runs: list[dict]) -> str:
    """One Markdown row per run: model, parameters, test accuracy, macro F1, best epoch, wall time."""
    varying = _varying_params(runs)
    models = list(dict.fromkeys(r["params"].get("model.name", "?") for r in runs))
    runs = sorted(
        runs,
        key=lambda r: (models.index(r["params"].get("model.name", "?")), [_natural(r, k) for k in varying]),
    )
    lines = [
        "| model | "
        + "".join(f"{k} | " for k in varying)
        + "params | test acc | test bal. acc | test macro F1 "
        "| best epoch | train s | status |",
        "|---|" + "---|" * len(varying) + "---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        m, p = r["metrics"], r["params"]
        lines.append(
            f"| {p.get('model.name', '?')} | "
            + "".join(f"{p.get(k, '-')} | " for k in varying)
            + f"{_fmt(p.get('model.n_params'), ',')} | {_fmt(m.get('test/acc'), '.4f')} "
            f"| {_fmt(m.get('test/balanced_acc'), '.4f')} | {_fmt(m.get('test/f1_macro'), '.4f')} "
            f"| {_fmt(m.get('best/epoch'), 'd')} | {_fmt(m.get('time/train_s'), '.0f')} | {r['status']} |"
        )
    return "\n".join(lines)


def _natural(run: dict, key: str) -> tuple:
    """Sort key of a param value: seeds and folds as numbers (2 before 10), anything else as text."""
    value = run["params"].get(key, "")
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)


def _varying_params(runs: list[dict]) -> list[str]:
    """Params (other than the model's) whose value differs between runs: seeds, folds, signers, ..."""
    keys = sorted({k for r in runs for k in r["params"] if not k.startswith(RUN_SPECIFIC)})
    return [k for k in keys if len({r["params"].get(k) for r in runs}) > 1]


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r["metrics"][key] for r in runs if key in r["metrics"]]
    return float(np.mean(values)) if values else None


def by_model(runs: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in runs:
        groups[r["params"].get("model.name", "?")].append(r)
    return dict(groups)


def _unit(run: dict, varying: list[str]) -> tuple:
    """What pairs runs of different models: same seed, fold, held-out signer, channels, ..."""
    return tuple(run["params"].get(k) for k in varying)


def paired_tests(runs: list[dict], metric: str = "test/acc") -> tuple[str, list[dict]]:
    """The best model (highest mean) against each other one, paired over shared seeds/folds/signers."""
    groups = by_model(runs)
    varying = _varying_params(runs)
    means = {m: np.mean([r["metrics"][metric] for r in rs]) for m, rs in groups.items()}
    best = max(means, key=means.get)
    best_by_unit = {_unit(r, varying): r["metrics"][metric] for r in groups[best]}
    rows = []
    for model, rs in groups.items():
        if model == best:
            continue
        pairs = [
            (best_by_unit[u], r["metrics"][metric]) for r in rs if (u := _unit(r, varying)) in best_by_unit
        ]
        a, b = (np.array(x) for x in zip(*pairs, strict=True)) if pairs else (np.array([]), np.array([]))
        diff = a - b
        p = float("nan")
        if len(pairs) > 1 and np.any(diff != 0):
            p = float(stats.ttest_rel(a, b).pvalue)
        rows.append(
            {
                "model": model,
                "n": len(pairs),
                "diff": float(diff.mean()) if len(pairs) else float("nan"),
                "wins": int((diff > 0).sum()),
                "p": p,
            }
        )
    return best, rows


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def confused_pairs(cm: np.ndarray, classes: list[str], top: int = 5) -> list[tuple[str, str, int]]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    return [
        (classes[i], classes[j], int(off[i, j]))
        for i, j in zip(*np.unravel_index(order, off.shape), strict=True)
        if off[i, j] > 0
    ]


def build_report(runs: list[dict], out_dir: Path, title: str) -> list[Path]:
    """report.md + figures in out_dir from finished runs that carry a confusion matrix."""
    runs = [r for r in runs if r["status"] == "FINISHED" and "test/acc" in r["metrics"]]
    if not runs:
        raise ValueError("no finished runs with test metrics to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = by_model(runs)
    classes = runs[0]["classes"]
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} finished runs. Mean +- sample std [95% t-interval of the mean].",
        "",
    ]
    shared = sum(r["tags"].get(SHARED_CPU) == "true" for r in runs)
    latency_label = "latency ms *" if shared else "latency ms"
    head = "| model | runs | params | " + " | ".join(label for _, label in METRICS)
    lines += [
        head + f" | train s | {latency_label} |",
        "|---|---:|---:|" + "---|" * len(METRICS) + "---:|---:|",
    ]
    for model, rs in groups.items():
        cells = []
        for key, _ in METRICS:
            s = summarise([r["metrics"][key] for r in rs])
            interval = f" [{s['lo']:.4f}, {s['hi']:.4f}]" if s["n"] > 1 else ""
            cells.append(f"{s['mean']:.4f} +- {s['std']:.4f}{interval}" if s["n"] > 1 else f"{s['mean']:.4f}")
        n_params = rs[0]["params"].get("model.n_params")
        train_s = _mean_of(rs, "time/train_s")
        latency = _mean_of(rs, "time/latency_ms")
        lines.append(
            f"| {model} | {len(rs)} | {_fmt(n_params, ',')} | "
            + " | ".join(cells)
            + f" | {_fmt(train_s, '.0f')} | {_fmt(latency, '.2f')} |"
        )

    if shared:
        lines += [
            "",
            f"\\* {shared} of {len(runs)} runs trained beside other jobs on the same CPU: their training "
            "time and latency are inflated; `make bench` measures latency alone.",
        ]

    best, tests = paired_tests(runs)
    tests = [t for t in tests if t["n"] > 0]
    if tests:  # nothing to pair (one model, or no shared seed/fold/signer): no table of empty tests
        lines += [
            "",
            f"## Is {best}'s lead real? (paired over shared seeds/folds/signers, test acc)",
            "",
            "| vs | pairs | mean lead | wins | paired t-test p |",
            "|---|---:|---:|---:|---:|",
        ]
        for t in tests:
            p = "n/a" if np.isnan(t["p"]) else f"{t['p']:.4f}"
            lines.append(f"| {t['model']} | {t['n']} | {t['diff']:+.4f} | {t['wins']}/{t['n']} | {p} |")
        lines += [
            "",
            "p < 0.05 marks a lead unlikely to be seed/fold luck. With few pairs the test has little power: "
            "a large p means not shown, not no difference.",
        ]
    lines.append("")

    summed = {m: sum(r["confusion"] for r in rs) for m, rs in groups.items()}
    lines += ["## Most confused pairs (true -> predicted, summed over runs)", ""]
    for model, cm in summed.items():
        pairs = ", ".join(f"{a} -> {b} ({n})" for a, b, n in confused_pairs(cm, classes)) or "none"
        lines.append(f"- {model}: {pairs}")
    lines += [
        "",
        "## Runs",
        "",
        sweep_table(runs),
        "",
        "![confusion matrices](confusion_grid.png)",
        "",
        "![per-class F1](per_class_f1.png)",
        "",
    ]
    calibration_lines, calibration_figures = calibration_section(runs, out_dir, _varying_params(runs))
    lines += calibration_lines

    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    f1 = {m: np.mean([per_class_f1(r["confusion"]) for r in rs], axis=0) for m, rs in groups.items()}
    return [
        report,
        figures.confusion_grid(summed, classes, out_dir / "confusion_grid.png"),
        figures.per_class_heatmap(f1, classes, out_dir / "per_class_f1.png"),
        *calibration_figures,
    ]
