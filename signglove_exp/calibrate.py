"""Calibrate a trained model to a new signer with a few labelled episodes: a personal model, logged.

python -m signglove_exp.calibrate BASE_MODEL --data MY_RECORDINGS [--shots 5] [--method renorm+prototype]

BASE_MODEL is a checkpoint, an MLflow run id or a runs:/ or models:/ URI (the bundled pretrained GRU:
signglove_exp/bundled/pretrained/gru-reference.ckpt). MY_RECORDINGS holds the new signer's episodes in
class folders. `--shots` episodes of each class (drawn by `--seed`) calibrate; the others, if any,
measure the base and the personal model. The personal model is an MLflow run (checkpoint, pyfunc
model, which files calibrated) whose card names its base model and method: `recognize RUN_ID`,
`--stream` and `export` take it like any other.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from dataclasses import replace
from pathlib import Path

from signglove_exp import command


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument(
        "model", help="base model: a checkpoint file, an MLflow run id, or a runs:/ or models:/ URI"
    )
    ap.add_argument(
        "--data", required=True, help="folder of the new signer's labelled episodes (class folders)"
    )
    ap.add_argument("--shots", type=int, default=5, help="episodes per class that calibrate (default 5)")
    ap.add_argument("--method", help="adaptation method, a+b chains (default: calibration.default_method)")
    ap.add_argument("--seed", type=int, default=0, help="draws the calibration episodes (default 0)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove", help="where the personal model's run goes")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from signglove_exp import data
    from signglove_exp.card import CARD_KEY
    from signglove_exp.inference.evaluation import episodes_to_evaluate
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.tracking.runs import log_evaluation, log_pyfunc
    from signglove_exp.tracking.store import resolve_uri
    from signglove_exp.training.adapt import adapt, check_methods, evaluate
    from signglove_exp.training.cli import compose

    settings = compose().calibration
    method = args.method or settings.default_method
    check_methods([method], "--method")
    rec = Recognizer.load(args.model, args.tracking_uri)
    if rec.net is None:
        raise ValueError(f"{args.model}: an ONNX file holds no weights to adapt; give its checkpoint or run")
    corpus, idx, described = episodes_to_evaluate(rec, args.data)
    raw = [corpus.episodes[i].values for i in idx]
    labels = np.array([corpus.episodes[i].label for i in idx])
    calib, rest = data.draw_shots(labels, args.shots, args.seed)
    missing = sorted(set(range(len(rec.classes))) - set(labels[calib].tolist()))
    net, card = adapt(
        rec.net,
        rec.card,
        [raw[i] for i in calib],
        labels[calib],
        method,
        {"epochs": settings.epochs, "lr": settings.lr, "seed": args.seed},
    )
    source_run = None if Path(args.model).is_file() or args.model.startswith("models:/") else args.model
    if args.model.startswith("runs:/"):
        source_run = args.model.split("/")[1]
    card = replace(
        card,
        lineage={
            "source": args.model,
            "source_run": source_run,
            "source_lineage": rec.card.lineage or None,
            "adapted": f"calibrated: {method}, {args.shots} episode(s) per class",
            "method": method,
            "shots": args.shots,
            "calibration_episodes": len(calib),
            "data": described,
            "data_fingerprint": corpus.fingerprint,
        },
    )
    metrics = {}
    if len(rest):
        rest_raw, rest_labels = [raw[i] for i in rest], labels[rest]
        base = evaluate(rec.net, rec.card, rest_raw, rest_labels)
        mine = evaluate(net, card, rest_raw, rest_labels)
        metrics = {"base/acc": base["acc"], "base/f1_macro": base["f1_macro"]}
        metrics.update({"test/acc": mine["acc"], "test/f1_macro": mine["f1_macro"]})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / f"{card.name}-calibrated.ckpt"
        torch.save({"state_dict": net.state_dict(), CARD_KEY: card.to_dict()}, checkpoint)
        manifest = Path(tmp) / "calibration_manifest.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "role", "jamo"])
            roles = {int(i): "calibration" for i in calib}
            for j, i in enumerate(idx):
                w.writerow([corpus.episodes[i].path, roles.get(j, "test"), corpus.episodes[i].jamo])
        params = {
            "source": args.model,
            "method": method,
            "shots": args.shots,
            "seed": args.seed,
            "data": described,
            "data.fingerprint": corpus.fingerprint,
            "n_calibration": len(calib),
            "n_test": len(rest),
            "model.name": card.name,
        }
        name = f"calibrated-{card.name}-{Path(args.data).name}-k{args.shots}"
        uri = resolve_uri(args.tracking_uri)
        run_id = log_evaluation(
            uri,
            args.experiment,
            card.lineage["source_run"],
            name,
            params,
            metrics,
            [manifest],
            kind="calibration",
            checkpoint=checkpoint,
        )
        log_pyfunc(uri, run_id, checkpoint, corpus.root / corpus.episodes[idx[0]].path, card)
    print(f"{described}: {len(calib)} episodes calibrated the model ({method}, {args.shots} per class).")
    if (rec.card.preprocess or {}).get("normalize") == "per_signer" and "renorm" not in method.split("+"):
        print("This model normalises per signer: a method starting with renorm gives it your statistics")
    if missing:
        print(
            f"No calibration episode for {' '.join(rec.classes[k] for k in missing)}: "
            "those classes keep the base model's output weights"
        )
    if metrics:
        print(
            f"On the other {len(rest)} episodes: base model acc {metrics['base/acc']:.4f}, "
            f"personal model acc {metrics['test/acc']:.4f}"
        )
    print(f"Personal model: run {run_id} (python -m signglove_exp.recognize {run_id} FILES)")
    return {"run_id": run_id, **metrics}


if __name__ == "__main__":
    command(main)
