"""Comparison report over a set of runs: statistics per model, paired tests, confusion figures.

python -m signglove_exp.report --sweep 2026-11-25_10-05-39       # one multirun
python -m signglove_exp.report --experiment signglove             # every finished run
python -m signglove_exp.report --filter "params.split.strategy = 'by_signer'"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from signglove_exp import command, default_outputs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.report", description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument(
        "--sweep",
        nargs="+",
        default=[],
        help="the sweep tag of a multirun (its folder name under outputs/multirun); several make one report",
    )
    which.add_argument("--parent", help="the parent run id of a multirun")
    which.add_argument("--filter", help="an MLflow search filter, e.g. \"tags.sweep = 'x'\"")
    ap.add_argument("--experiment", default="signglove", help="MLflow experiment (default: signglove)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--out", type=Path, help="output folder (default: outputs/reports/<selection>)")
    args = ap.parse_args(argv)

    from signglove_exp.reporting.compare import build_report
    from signglove_exp.tracking.queries import RunSelection, fetch_runs
    from signglove_exp.tracking.runs import log_report

    selection = RunSelection(args.experiment, tuple(args.sweep), args.parent, args.filter, args.tracking_uri)
    runs, parents = fetch_runs(selection)
    out = args.out or default_outputs() / "reports" / selection.slug()
    files = build_report(runs, out, f"Comparison: {selection.describe()}")
    for parent in parents:
        log_report(selection.uri, parent, files)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"Written to {out}" + (f" and logged to run(s) {', '.join(parents)}" if parents else ""))


if __name__ == "__main__":
    command(main)
