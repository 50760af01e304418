"""A trained model on a set of episodes: metrics, per-class table, predictions and confusion figure.

The model's own scaler, channels, classes and sequence length are applied; a folder whose episodes do
not fit them (a missing channel, a class the model does not know) is an error, not a number.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from signglove_exp import data
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.metrics import classification_metrics


def episodes_to_evaluate(
    rec: Recognizer, root: str | None, part: str = "test"
) -> tuple[data.Corpus, list[int], str]:
    """The usable episodes of `root`, or of the model's own split's `part` when root is None."""
    cfg = OmegaConf.create(rec.card.config)
    if root is None:
        corpus = data.load_corpus(
            data.ensure_unpacked(cfg.data),
            rec.classes,
            rec.channels,
            cfg.data.min_len,
            cfg.data.signer_prefix,
        )
        if rec.card.data_fingerprint and corpus.fingerprint != rec.card.data_fingerprint:
            raise ValueError(
                f"{cfg.data.root} no longer holds the episodes this model was trained on (data "
                "fingerprint differs): pass --data to evaluate on it as new data"
            )
        return corpus, data.split(corpus, cfg.split)[part], f"{part} split of {cfg.data.root}"
    # an episode is what its training took as one (data.min_len)
    corpus = data.load_corpus(root, rec.classes, rec.channels, cfg.data.min_len, cfg.data.signer_prefix)
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
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # not on the calibrate path

    from signglove_exp.reporting import figures

    episodes = [corpus.episodes[i] for i in idx]
    probs = rec.probabilities([e.values for e in episodes], [e.signer for e in episodes])
    y_true, y_pred = np.array([e.label for e in episodes]), probs.argmax(1)
    n = len(rec.classes)
    metrics = {f"eval/{k}": v for k, v in classification_metrics(y_true, y_pred).items()}
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
    title = f"{rec.card.name} on {len(idx)} episodes: acc {metrics['eval/acc']:.4f}"
    confusion = figures.write_confusion(cm, rec.classes, out_dir, title)
    return metrics, [per_class, predictions, *confusion]
