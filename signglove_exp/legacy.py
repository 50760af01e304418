"""Upstream KLP-SignGlove checkpoints and scaler, identified from their weights and imported.

    python -m signglove_exp.legacy data/legacy/*.ckpt --scaler data/legacy/scaler.pkl

Each checkpoint's architecture is told from its state-dict keys and shapes alone, rebuilt, wrapped
with the upstream scaler and upstream's way of running it (padding 1.0 in raw units, its readout
index), saved as a self-describing checkpoint and logged to MLflow as a run of its own, evaluated
on the reference test split. The work is `signglove_exp.upstream`; this is its command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from signglove_exp import BUNDLED_DIR, command, default_outputs


def main(argv: list[str] | None = None) -> list[dict]:
    default_dir = BUNDLED_DIR / "legacy"
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.legacy", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*", type=Path, help=f"default: every .ckpt in {default_dir}")
    ap.add_argument("--scaler", type=Path, default=default_dir / "scaler.pkl", help="upstream's scaler.pkl")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove-legacy", help="MLflow experiment for the imports")
    ap.add_argument("--out", type=Path, help="converted checkpoints (default: outputs/legacy)")
    args = ap.parse_args(argv)

    from signglove_exp.training.cli import compose
    from signglove_exp.upstream.convert import import_all
    from signglove_exp.upstream.scaler import read_scaler_pickle

    cfg = compose()
    scaler = read_scaler_pickle(args.scaler, list(cfg.data.channels))
    checkpoints = args.checkpoints or sorted(default_dir.glob("*.ckpt"))
    out = args.out or default_outputs() / "legacy"
    results = import_all(checkpoints, scaler, cfg, out, args.tracking_uri, args.experiment)
    for r in results:
        print(
            f"{r['file']}: {r['model']} ({r['n_params']:,} parameters), test acc {r['eval/acc']:.4f} on "
            f"{r['n_episodes']} episodes; run {r['run_id']}, checkpoint {r['checkpoint']}"
        )
    return results


if __name__ == "__main__":
    command(main)
