"""Evaluate a trained model on any data, as an MLflow run linked to the run that trained it.

    python -m signglove_exp.evaluate RUN_ID                       # on that run's own test split
    python -m signglove_exp.evaluate RUN_ID --data /my/episodes   # every episode in a folder
    python -m signglove_exp.evaluate path/to/model.ckpt --data /my/episodes

The model's own scaler, channels, classes and sequence length are applied; a folder whose episodes
do not fit them (a missing channel, a class the model does not know) is an error, not a number.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from signglove_exp import data, plots, tracking
from signglove_exp.module import classification_metrics
from signglove_exp.recognize import Recognizer


def episodes_to_evaluate(rec: Recognizer, root: str | None) -> tuple[data.Corpus, list[int], str]:
    """The usable episodes of `root`, or of the model's own test split when root is None."""
    cfg = OmegaConf.create(rec.meta["config"])
    if root is None:
        corpus = data.load_corpus(
            data.ensure_unpacked(cfg.data.root, cfg.data.get("archive")),
            rec.classes,
            rec.channels,
            cfg.data.min_len,
            cfg.data.signer_prefix,
        )
        if rec.meta["data_fingerprint"] and corpus.fingerprint != rec.meta["data_fingerprint"]:
            raise ValueError(
                f"{cfg.data.root} no longer holds the episodes this model was trained on (data "
                "fingerprint differs): pass --data to evaluate on it as new data"
            )
        return corpus, data.split(corpus, cfg.split)["test"], f"test split of {cfg.data.root}"
    corpus = data.load_corpus(root, rec.classes, rec.channels, 1, cfg.data.signer_prefix)
    misfits = corpus.unlabelled + [(p, r) for p, r in corpus.rejected if r.startswith("missing column")]
    if misfits:
        listing = "; ".join(f"{Path(root) / p}: {r}" for p, r in misfits[:5])
        raise ValueError(
            f"{len(misfits)} episode file(s) in {root} do not fit this model "
            f"(channels {', '.join(rec.channels)}; {len(rec.classes)} classes): {listing}"
        )
    usable = [i for i, e in enumerate(corpus.episodes) if e.reason is None]
    if not usable:
        raise ValueError(f"no usable episodes in {root}")
    return corpus, usable, str(root)


def evaluate(rec: Recognizer, corpus: data.Corpus, idx: list[int], out_dir: Path) -> tuple[dict, list[Path]]:
    episodes = [corpus.episodes[i] for i in idx]
    probs = rec.probabilities([e.values for e in episodes])
    y_true, y_pred = np.array([e.label for e in episodes]), probs.argmax(1)
    n = len(rec.classes)
    metrics = {f"eval/{k}": v for k, v in classification_metrics(y_true, y_pred, n).items()}
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = out_dir / "per_class.csv"
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n)), zero_division=0
    )
    with open(per_class, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["jamo", "precision", "recall", "f1", "support"])
        for row in zip(rec.classes, precision, recall, f1, support, strict=True):
            w.writerow([row[0], *(f"{v:.4f}" for v in row[1:4]), int(row[4])])
    predictions = out_dir / "predictions.csv"
    with open(predictions, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "true", "predicted", "probability"])
        for e, p in zip(episodes, probs, strict=True):
            w.writerow([e.path, e.jamo, rec.classes[int(p.argmax())], f"{p.max():.4f}"])
    title = f"{rec.meta['model']['name']} on {len(idx)} episodes: acc {metrics['eval/acc']:.4f}"
    confusion = plots.write_confusion(cm, rec.classes, out_dir, title)
    return metrics, [per_class, predictions, *confusion]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an MLflow run id of a training run, a checkpoint or a .onnx file")
    ap.add_argument("--data", help="folder of episode CSVs (default: the run's own test split)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    ap.add_argument("--experiment", default="signglove", help="where the evaluation run goes")
    ap.add_argument("--out", type=Path, help="also keep the files here")
    args = ap.parse_args(argv)
    is_file = Path(args.model).is_file()
    rec = Recognizer.load(args.model, args.tracking_uri)
    corpus, idx, described = episodes_to_evaluate(rec, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        metrics, files = evaluate(rec, corpus, idx, out)
        params = {
            "source": args.model,
            "data": described,
            "data.fingerprint": corpus.fingerprint,
            "n_episodes": len(idx),
            "model.name": rec.meta["model"]["name"],
        }
        name = f"eval-{rec.meta['model']['name']}-{Path(args.model).stem if is_file else args.model[:8]}"
        run_id = tracking.log_evaluation(
            args.tracking_uri, args.experiment, None if is_file else args.model, name, params, metrics, files
        )
    print(f"{described}: {len(idx)} episodes, " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"Evaluation run {run_id}" + ("" if is_file else f", linked to training run {args.model}"))
    return metrics


if __name__ == "__main__":
    main()
