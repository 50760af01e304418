"""The few-shot calibration part of a sweep's report: accuracy against shots per class, one line per
model and method, from the `fewshot/<method>/k<k>/draw<d>/acc` metrics of runs with `calibration.shots`
(a chain `a+b` is logged as `a.b`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from signglove_exp.reporting import figures

KEY = re.compile(r"^fewshot/(?P<method>[^/]+)/k(?P<k>\d+)(?:/draw\d+)?/acc$")


CHOSEN = "fewshot.chosen.k"  # the params naming, per k, the method chosen on validation
POOLED = ("split.test_signer", "seed")  # what a curve's points pool over, with the draws


def curves(runs: list[dict], settings: list[str]) -> dict[tuple[str, str], dict[int, list[float]]]:
    """(model and its `settings` values, method) -> k -> accuracies over held-out signers, seeds and
    draws. k = 0 is the model as trained, shared by every method without a k = 0 of its own (one that
    reads the person's unlabelled episodes has one)."""
    per_draw = defaultdict(lambda: defaultdict(list))
    for r in runs:
        metrics = r["metrics"]
        model = " ".join(
            [r["params"].get("model.name", "?"), *(f"{k}={r['params'].get(k)}" for k in settings)]
        )
        methods = {m["method"] for k in metrics if (m := KEY.match(k)) and m["method"] != "none"}
        own_k0 = {m["method"] for k in metrics if (m := KEY.match(k)) and m["k"] == "0"}
        for key, value in metrics.items():
            m = KEY.match(key)
            if not m or "/draw" not in key and m["k"] != "0":
                continue
            for method in sorted(methods - own_k0) if m["method"] == "none" else [m["method"]]:
                per_draw[(model, method.replace(".", "+"))][int(m["k"])].append(value)
    return {key: dict(sorted(ks.items())) for key, ks in per_draw.items()}


def calibration_section(runs: list[dict], out_dir: Path, varying: list[str]) -> tuple[list[str], list[Path]]:
    """Markdown lines (a table: mean [lowest, highest] per k) and the learning-curve figure; nothing
    when no run measured calibration. `varying` params other than the held-out signer and the seed
    (a normalisation scope, an augmentation) make rows of their own."""
    data = curves(runs, [k for k in varying if k not in POOLED and not k.startswith(CHOSEN)])
    if not data:
        return [], []
    shots = sorted({k for ks in data.values() for k in ks})
    lines = [
        "## Few-shot calibration on the held-out signer",
        "",
        "Test accuracy on the held-out signer's other episodes after calibrating with k labelled episodes "
        "per class; mean [lowest, highest] over held-out signers x seeds x draws (the signers differ "
        "systematically, so their range, not a t-interval, is shown). k = 0: no labelled episode (a "
        "method that reads the person's unlabelled episodes was tested on those it did not read).",
        "",
        "| model | method | " + " | ".join(f"k={k}" for k in shots) + " |",
        "|---|---|" + "---:|" * len(shots),
    ]
    bands = {}
    for (model, method), ks in sorted(data.items()):
        stats = {k: {"mean": sum(v) / len(v), "lo": min(v), "hi": max(v), "n": len(v)} for k, v in ks.items()}
        bands[(model, method)] = stats
        cells = [
            f"{s['mean']:.3f}" + (f" [{s['lo']:.3f}, {s['hi']:.3f}]" if s["n"] > 1 else "")
            if (s := stats.get(k))
            else "-"
            for k in shots
        ]
        lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    chosen = defaultdict(list)  # k -> "method (model, held-out signer)", one per run
    for r in runs:
        run = f"{r['params'].get('model.name')}, {r['params'].get('split.test_signer')}"
        for key, method in r["params"].items():
            if key.startswith(CHOSEN):
                chosen[int(key.removeprefix(CHOSEN))].append(f"{method} ({run})")
    if chosen:
        said = "; ".join(f"k={k}: {', '.join(sorted(v))}" for k, v in sorted(chosen.items()))
        lines += [
            "",
            f"`chosen`: for each k, the method best on the validation part (a new condition, never the "
            f"held-out signer), then measured once on the held-out signer ({said}); the validation grid "
            "is logged as `val/fewshot/...`.",
        ]
    lines += ["", "![calibration curves](calibration_curves.png)", ""]
    return lines, [figures.learning_curves(bands, out_dir / "calibration_curves.png")]
