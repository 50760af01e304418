"""Evaluate a trained model on any data, as an MLflow run linked to the run that trained it.

python -m signglove_exp.evaluate RUN_ID                       # on that run's own test split
python -m signglove_exp.evaluate RUN_ID --data /my/episodes   # every episode in a folder
python -m signglove_exp.evaluate path/to/model.ckpt --data /my/episodes
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from signglove_exp import command

UNLABELLED = "unlabelled statistics of the evaluated recording"  # a per_signer model's, labels unused


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an MLflow run id of a training run, a checkpoint or a .onnx file")
    ap.add_argument("--data", help="folder of episode CSVs (default: the run's own test split)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove", help="where the evaluation run goes")
    ap.add_argument("--out", type=Path, help="also keep the files here")
    args = ap.parse_args(argv)

    from signglove_exp.data import signer_statistics_needed
    from signglove_exp.inference.evaluation import episodes_to_evaluate, evaluate
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.tracking.runs import log_evaluation

    is_file = Path(args.model).is_file()
    rec = Recognizer.load(args.model, args.tracking_uri)
    corpus, idx, described = episodes_to_evaluate(rec, args.data)
    per_signer = signer_statistics_needed(rec.card)  # each signer scaled by its own episodes here
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        metrics, files = evaluate(rec, corpus, idx, out)
        present = {corpus.episodes[i].label for i in idx}
        missing = [c for k, c in enumerate(rec.classes) if k not in present]
        params = {
            "source": args.model,
            "data": described,
            "data.fingerprint": corpus.fingerprint,
            "n_episodes": len(idx),
            "model.name": rec.card.name,
            "classes_missing": " ".join(missing) or "(none)",
        }
        name = f"eval-{rec.card.name}-{Path(args.model).stem if is_file else args.model[:8]}"
        run_id = log_evaluation(
            args.tracking_uri,
            args.experiment,
            None if is_file else args.model,
            name,
            params,
            metrics,
            files,
            tags={"signglove.statistics": UNLABELLED} if per_signer else None,
        )
    print(f"{described}: {len(idx)} episodes, " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if per_signer:
        signers = sorted({corpus.episodes[i].signer for i in idx})
        print(f"Scaled with {UNLABELLED} (per signer: {', '.join(signers)}), as this model normalises")
    if missing:
        print(
            f"{len(missing)} of the model's {len(rec.classes)} classes have no episode here "
            f"({' '.join(missing)}): macro scores are over the {len(present)} present"
        )
    print(f"Evaluation run {run_id}" + ("" if is_file else f", linked to training run {args.model}"))
    return metrics


if __name__ == "__main__":
    command(main)
