"""A personal model: a trained model calibrated to a new signer with a few labelled episodes, and its
MLflow run. Library functions (a notebook calls them); `python -m signglove_exp.calibrate` is the command.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from signglove_exp import data
from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.inference.evaluation import episodes_to_evaluate
from signglove_exp.inference.recognizer import Recognizer, source_run_of
from signglove_exp.tracking.packaging import log_pyfunc
from signglove_exp.tracking.runs import log_evaluation
from signglove_exp.tracking.store import resolve_uri
from signglove_exp.training.adapt import adapt, check_methods, evaluate, label_free, reads_unlabelled


@dataclass
class PersonalModel:
    net: torch.nn.Module
    card: ModelCard  # its lineage names the base model, the method and the calibration episodes
    corpus: data.Corpus  # the new signer's episodes that fit the model
    used: np.ndarray  # indices into corpus.episodes, in the order of `calibration` and `rest`
    calibration: np.ndarray  # positions in `used` that calibrated
    rest: np.ndarray  # positions in `used` that measured the base and the personal model
    described: str  # what the data was, in words
    metrics: dict[str, float] = field(default_factory=dict)  # base/acc, test/acc, ... on `rest`
    unlabelled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # read without labels


def personalise(
    base: Recognizer, source: str, data_dir: str, shots: int, method: str, seed: int, settings: dict
) -> PersonalModel:
    """Calibrate `base` (loaded from `source`) with `shots` episodes per class of `data_dir`, drawn by
    `seed`; `settings` holds the fine-tuning settings (`adapt.tuning`). The other episodes measure both
    models; a method that reads unlabelled episodes (`selftrain`) reads half of them (seeded) and the
    other half measures, so no measured episode was read.
    `shots=0` uses no label ("unlabelled calibration"): `renorm` takes the statistics of all the
    episodes, which all then measure the result; a label-free method that reads unlabelled episodes
    (`selftrain`) reads half of them and the other half measures. A per_signer base model is always
    given the person's statistics first (`renorm+...`)."""
    if shots < 0:
        raise ValueError(f"--shots {shots}: 0 (no labels) or more episodes per class")
    check_methods([method], "--method")
    if shots == 0 and not label_free(method):
        raise ValueError(
            f"--shots 0 uses no labels; --method {method} needs shots (with none: renorm, or selftrain)"
        )
    if data.signer_statistics_needed(base.card) and not method.startswith("renorm"):
        method = f"renorm+{method}"
    if base.net is None:
        raise ValueError(f"{source}: an ONNX file holds no weights to adapt; give its checkpoint or run")
    corpus, idx, described = episodes_to_evaluate(base, data_dir)
    raw = [corpus.episodes[i].values for i in idx]
    labels = np.array([corpus.episodes[i].label for i in idx])
    missing = [base.classes[c] for c in sorted(set(range(len(base.classes))) - set(labels.tolist()))]
    if missing:
        raise ValueError(
            f"--data {data_dir}: no episode of {len(missing)} of the model's {len(base.classes)} classes "
            f"({' '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}); calibrating on some classes "
            "changes what the others read (their scores are rescaled and outscored, and nothing here "
            "could measure it): record every class"
        )
    if shots == 0 and not reads_unlabelled(method):  # statistics only: of every episode, all measure
        calib = rest = np.arange(len(labels))
        used = 0
    elif shots == 0:
        calib, rest, used = np.zeros(0, np.int64), np.arange(len(labels)), 0
    else:
        calib, rest = data.draw_shots(labels, shots, seed)
        per_class = np.bincount(labels[calib])
        used = int(per_class[per_class > 0].min())  # a class with fewer episodes than asked gives all it has
    read = np.zeros(0, np.int64)
    if reads_unlabelled(method):
        if not len(rest):
            raise ValueError(
                f"--method {method} reads unlabelled episodes of yours besides the shots, and --data "
                f"{data_dir} holds only the shots: record more or give a --method without selftrain"
            )
        rest, read = (np.sort(h) for h in data.halves(rest, seed))
    net, card = adapt(
        base.net,
        base.card,
        [raw[i] for i in calib],
        labels[calib],
        method,
        {**settings, "seed": seed, "unlabelled": [raw[i] for i in read]},
    )
    card = replace(
        card,
        lineage={
            "source": source,
            "source_run": source_run_of(source),
            "source_lineage": base.card.lineage or None,
            "adapted": f"statistics of {len(calib)} unlabelled episode(s)"
            if shots == 0 and not len(read)
            else f"unlabelled: {method}, {len(read)} episode(s) read without labels"
            if shots == 0
            else f"calibrated: {method}, {used} episode(s) per class"
            + (f" ({shots} asked; the data holds fewer)" if used < shots else ""),
            "method": method,
            "shots": used,
            "shots_asked": shots,
            "calibration_episodes": len(calib),
            "unlabelled_episodes": len(read),
            "data": described,
            "data_fingerprint": corpus.fingerprint,
        },
    )
    metrics = {}
    if len(rest):
        rest_raw, rest_labels = [raw[i] for i in rest], labels[rest]
        after = evaluate(net, card, rest_raw, rest_labels)
        metrics = {"test/acc": after["acc"], "test/f1_macro": after["f1_macro"]}
        if not data.signer_statistics_needed(base.card):  # a per_signer base model reads no one alone
            before = evaluate(base.net, base.card, rest_raw, rest_labels)
            metrics.update({"base/acc": before["acc"], "base/f1_macro": before["f1_macro"]})
    return PersonalModel(net, card, corpus, np.asarray(idx), calib, rest, described, metrics, read)


def log_personal_model(personal: PersonalModel, seed: int, uri: str | None, experiment: str) -> str:
    """The personal model as an MLflow run: checkpoint, pyfunc model, which episodes calibrated."""
    card, corpus, lineage = personal.card, personal.corpus, personal.card.lineage
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / f"{card.name}-calibrated.ckpt"
        torch.save({"state_dict": personal.net.state_dict(), CARD_KEY: card.to_dict()}, checkpoint)
        manifest = Path(tmp) / "calibration_manifest.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "role", "jamo"])
            role = "statistics" if lineage["shots"] == 0 else "calibration"  # shots 0: all, and all measure
            roles = {int(i): "unlabelled" for i in personal.unlabelled}  # read without labels (selftrain)
            roles |= {int(i): role for i in personal.calibration}
            for j, i in enumerate(personal.used):
                w.writerow([corpus.episodes[i].path, roles.get(j, "test"), corpus.episodes[i].jamo])
        params = {
            "source": lineage["source"],
            "method": lineage["method"],
            "shots": lineage["shots"],
            "shots_asked": lineage["shots_asked"],
            "seed": seed,
            "data": personal.described,
            "data.fingerprint": corpus.fingerprint,
            "n_calibration": len(personal.calibration),
            "n_unlabelled": len(personal.unlabelled),
            "n_test": len(personal.rest),
            "model.name": card.name,
        }
        name = f"calibrated-{card.name}-{Path(personal.described).name}-k{lineage['shots']}"
        uri = resolve_uri(uri)
        run_id = log_evaluation(
            uri,
            experiment,
            lineage["source_run"],
            name,
            params,
            personal.metrics,
            [manifest],
            kind="calibration",
            checkpoint=checkpoint,
        )
        example = corpus.root / corpus.episodes[personal.used[0]].path
        log_pyfunc(uri, run_id, checkpoint, example, card)
    return run_id
