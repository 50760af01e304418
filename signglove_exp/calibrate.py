"""Calibrate a trained model to a new signer with a few labelled episodes: a personal model, logged.

python -m signglove_exp.calibrate BASE_MODEL --data MY_RECORDINGS [--shots 5] [--method renorm+prototype]

BASE_MODEL is a checkpoint, an MLflow run id or a runs:/ or models:/ URI (the bundled pretrained GRU:
signglove_exp/bundled/pretrained/gru-reference.ckpt). MY_RECORDINGS holds the new signer's episodes in
class folders, one for each of the model's classes (calibrating on some would change, unmeasured,
what the others read: refused). `--shots` episodes of each class (drawn by `--seed`) calibrate; the
others, if any, measure the base and the personal model. The personal model is an MLflow run
(checkpoint, pyfunc model, which files calibrated) whose card names its base model and method:
`recognize RUN_ID`, `--stream` and `export` take it like any other.
"""

from __future__ import annotations

import argparse

from signglove_exp import command


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument(
        "model", help="base model: a checkpoint file, an MLflow run id, or a runs:/ or models:/ URI"
    )
    ap.add_argument(
        "--data", required=True, help="folder of the new signer's labelled episodes (class folders)"
    )
    ap.add_argument(
        "--shots",
        type=int,
        default=5,
        help="labelled episodes per class (default 5); 0: no labels (statistics, or --method selftrain)",
    )
    ap.add_argument("--method", help="adaptation method, a+b chains (default: calibration.default_method)")
    ap.add_argument("--seed", type=int, default=0, help="draws the calibration episodes (default 0)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove", help="where the personal model's run goes")
    args = ap.parse_args(argv)

    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.training.adapt import tuning
    from signglove_exp.training.cli import compose
    from signglove_exp.training.personal import log_personal_model, personalise

    settings = compose().calibration
    method = args.method or ("renorm" if args.shots == 0 else settings.default_method)
    base = Recognizer.load(args.model, args.tracking_uri)
    personal = personalise(base, args.model, args.data, args.shots, method, args.seed, tuning(settings))
    run_id = log_personal_model(personal, args.seed, args.tracking_uri, args.experiment)
    metrics = personal.metrics
    lineage = personal.card.lineage
    used = lineage["shots"]
    fewer = f"; {args.shots} asked, the data holds fewer" if used < args.shots else ""
    read = len(personal.unlabelled)
    if used == 0 and read:
        print(f"{personal.described}: no labels; {lineage['method']} read {read} episodes without them.")
    elif used == 0:
        print(
            f"{personal.described}: the statistics of {len(personal.calibration)} episodes (labels unused)."
        )
    else:
        print(
            f"{personal.described}: {len(personal.calibration)} episodes calibrated the model "
            f"({lineage['method']}, {used} per class{fewer})."
        )
    if read and used:
        print(f"{read} other episodes were read without their labels (selftrain).")
    if lineage["method"] != method:
        print(f"This model normalises per signer: {lineage['method']} gives it your statistics first")
    if metrics:
        base = f"base model acc {metrics['base/acc']:.4f}, " if "base/acc" in metrics else ""
        which = "the same" if used == 0 and not read else "the other"
        print(f"On {which} {len(personal.rest)} episodes: {base}personal model acc {metrics['test/acc']:.4f}")
    print(f"Personal model: run {run_id} (python -m signglove_exp.recognize {run_id} FILES)")
    return {"run_id": run_id, **metrics}


if __name__ == "__main__":
    command(main)
