"""Tables over sets of runs, from plain dicts of params, metrics and tags (no MLflow import)."""

from __future__ import annotations


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(int(value), spec) if spec in ("d", ",") else format(value, spec)


def sweep_table(runs: list[dict]) -> str:
    """One Markdown row per run: model, parameters, test accuracy, macro F1, best epoch, wall time."""
    lines = [
        "| model | seed | params | test acc | test bal. acc | test macro F1 | best epoch | wall s | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        m, p = r["metrics"], r["params"]
        lines.append(
            f"| {p.get('model.name', '?')} | {p.get('seed', '?')} | {_fmt(m.get('model/n_params'), ',')} "
            f"| {_fmt(m.get('test/acc'), '.4f')} | {_fmt(m.get('test/balanced_acc'), '.4f')} "
            f"| {_fmt(m.get('test/f1_macro'), '.4f')} | {_fmt(m.get('best_epoch'), 'd')} "
            f"| {_fmt(m.get('time/train_s'), '.0f')} | {r['status']} |"
        )
    return "\n".join(lines)
