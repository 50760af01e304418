"""Few-shot calibration to a new signer, a registry of adaptation methods.

A method takes a trained network, its card and a few labelled episodes of the new signer (raw, in the
card's channel order) and returns the adapted network and card; `a+b` chains methods. The result is
an ordinary model (same architecture, card with lineage), so recognition, streaming and ONNX export
use it like any other. A step may carry its own settings, `finetune_all:epochs=100:lr=0.003`, so a
protocol chooses settings on validation as it chooses methods. A method that also reads the person's
unlabelled episodes (`selftrain`) finds them in `settings["unlabelled"]` (raw, labels unknown), as it
finds its seed in `settings["seed"]`. `few_shot_grid` measures every (shots, draw, method) on a
held-out signer.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from signglove_exp import data, registrar
from signglove_exp.card import ModelCard
from signglove_exp.inference.recognizer import Recognizer
from signglove_exp.metrics import classification_metrics
from signglove_exp.models import last_linear
from signglove_exp.training.augment import Augmenter
from signglove_exp.training.finetune import freeze

Method = Callable[[nn.Module, ModelCard, list[np.ndarray], np.ndarray, dict], tuple[nn.Module, ModelCard]]
ADAPTATIONS: dict[str, Method] = {}
adaptation = registrar(ADAPTATIONS)
TUNABLE = {  # name:key=value
    "epochs": int,
    "lr": float,
    "label_smoothing": float,
    "weight": float,
    "rounds": int,
    "pseudo_batch": int,
}
UNLABELLED = {"selftrain"}  # the methods that read settings["unlabelled"]; a new one adds its name
LABEL_FREE = {"renorm", "adabn", *UNLABELLED}  # the methods that work with no shot (k = 0)


def tuning(calibration) -> dict:
    """The fine-tuning settings of a `calibration` config (a step's own `:key=value` override them)."""
    return {key: kind(calibration[key]) for key, kind in TUNABLE.items()}


def parse_step(step: str, key: str = "calibration.methods") -> tuple[str, dict]:
    """`finetune_all:epochs=100:lr=0.003` -> ("finetune_all", {"epochs": 100, "lr": 0.003})."""
    name, *pairs = step.split(":")
    if name not in ADAPTATIONS:
        raise ValueError(f"{key}: unknown method {name}; known: {', '.join(ADAPTATIONS)}")
    own = {}
    for pair in pairs:
        setting, _, value = pair.partition("=")
        try:
            own[setting] = TUNABLE[setting](value)
        except (KeyError, ValueError):
            raise ValueError(
                f"{key}: {step!r}: {pair!r} is not key=value with a key of {', '.join(TUNABLE)}"
            ) from None
    return name, own


def _of_person(episodes, settings) -> list[np.ndarray]:
    """Every episode of the person a label-free step may read: the shots and the unlabelled ones."""
    return [*episodes, *(settings.get("unlabelled") or [])]


@adaptation("renorm")
def renorm(net, card: ModelCard, episodes, labels, settings) -> tuple[nn.Module, ModelCard]:
    """Normalisation statistics re-estimated from the new signer's episodes, the shots and any read
    unlabelled (labels unused); the card says the scaler is now the signer's, so a per_signer model
    reads that person's episodes alone."""
    values, names = data.apply_transforms(
        _of_person(episodes, settings), card.channels, (card.preprocess or {}).get("transforms", {})
    )
    preprocess = {**(card.preprocess or {}), "scaler_of": "signer"}
    return net, replace(card, scaler=data.fit_scaler(values, names, card.seq_len), preprocess=preprocess)


@adaptation("adabn")
@torch.no_grad()
def adabn(net, card: ModelCard, episodes, labels, settings) -> tuple[nn.Module, ModelCard]:
    """Batch-norm statistics re-estimated on the new signer's episodes, as renorm's (AdaBN): the
    MS3D towers then see that person's feature scales as the training signers' were. A network without
    batch norm is refused, not returned unchanged under a name that says it adapted."""
    net = copy.deepcopy(net).eval()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"adabn: {card.name} has no batch norm to re-estimate")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass over all the episodes sets it
        m.train()
    net(*(torch.from_numpy(a) for a in data.model_inputs(_of_person(episodes, settings), card)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return net.eval(), card


@torch.no_grad()
def embed(net: nn.Module, card: ModelCard, episodes: list[np.ndarray]) -> torch.Tensor:
    """What the network's last linear layer reads for each episode: its embedding."""
    seen = []
    hook = last_linear(net).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        net.eval()
        net(*(torch.from_numpy(a) for a in data.model_inputs(episodes, card)))
    finally:
        hook.remove()
    return seen[0]


def _class_means(net, card: ModelCard, episodes, labels) -> tuple[nn.Linear, dict[int, torch.Tensor]]:
    e = embed(net, card, episodes)
    return last_linear(net), {int(c): e[torch.from_numpy(labels == c)].mean(0) for c in np.unique(labels)}


@adaptation("prototype")
def prototype(net, card: ModelCard, episodes, labels, settings) -> tuple[nn.Module, ModelCard]:
    """Nearest class mean on the embedding, no gradient step: the last layer becomes w_c = 2 m_c,
    b_c = -|m_c|^2 (the ranking of -|e - m_c|^2). A class with no episode keeps its trained row."""
    net = copy.deepcopy(net)
    last, means = _class_means(net, card, episodes, labels)
    for c, m in means.items():
        last.weight.data[c], last.bias.data[c] = 2 * m, -(m @ m)
    return net, card


@adaptation("prototype_blend")
def prototype_blend(net, card: ModelCard, episodes, labels, settings) -> tuple[nn.Module, ModelCard]:
    """The trained output layer kept as a prior and the person's class means added to it: logits are
    the trained ones plus `weight` times the prototype's (p proportional to p_trained * p_prototype ^
    weight), so one episode per class moves the decision without replacing what training learnt."""
    net = copy.deepcopy(net)
    last, means = _class_means(net, card, episodes, labels)
    for c, m in means.items():
        last.weight.data[c] += settings["weight"] * 2 * m
        last.bias.data[c] -= settings["weight"] * (m @ m)
    return net, card


def _finetune(
    net, card: ModelCard, episodes, labels, settings: dict, train: str, augment: bool = False, pseudo=None
) -> tuple[nn.Module, ModelCard]:
    """Full-batch AdamW on the calibration episodes (`epochs` steps, `lr`, `label_smoothing`); batch
    norm keeps the base model's statistics.
    With `augment`, each step sees the shots augmented as the model's training batches were (its
    card's `augment` strengths, seeded by `settings["seed"]`). `pseudo`, (x, lengths, labels) of
    pseudo-labelled episodes as the network reads them, adds `pseudo_batch` of them, drawn afresh, to
    each step's shots."""
    net = copy.deepcopy(net)
    freeze(net, train)
    x, lengths = (torch.from_numpy(a) for a in data.model_inputs(episodes, card))
    y = torch.from_numpy(labels)
    if pseudo is not None:
        draw = torch.Generator().manual_seed(settings.get("seed", 0))
    augmenter = None
    if augment:
        strengths = (card.config or {}).get("augment", {})
        features = (card.preprocess or {}).get("features", card.channels)
        augmenter = Augmenter(strengths, settings.get("seed", 0), features, card.scaler, card.padding)
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=settings["lr"], weight_decay=0
    )
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    for epoch in range(settings["epochs"]):
        optimizer.zero_grad()
        batch = augmenter(x, lengths, y, len(card.classes), epoch, 0) if augmenter else (x, lengths, y)
        if pseudo is not None:
            pick = torch.randperm(len(pseudo[2]), generator=draw)[: settings["pseudo_batch"]]
            theirs = [part[pick] for part in pseudo]
            batch = [torch.cat(pair) for pair in zip(batch, theirs, strict=True)] if len(y) else theirs
        loss = nn.functional.cross_entropy(
            net(*batch[:2]), batch[2], label_smoothing=settings.get("label_smoothing", 0.0)
        )
        loss.backward()
        optimizer.step()
    for p in net.parameters():
        p.requires_grad = True
    return net.eval(), card


@adaptation("finetune_head")
def finetune_head(net, card, episodes, labels, settings):
    """The classification head trained on the calibration episodes, the rest frozen."""
    return _finetune(net, card, episodes, labels, settings, "head")


@adaptation("finetune_all")
def finetune_all(net, card, episodes, labels, settings):
    """Every weight trained on the calibration episodes."""
    return _finetune(net, card, episodes, labels, settings, "all")


@adaptation("finetune_augmented")
def finetune_augmented(net, card, episodes, labels, settings):
    """Every weight trained on the calibration episodes, augmented at each step as training was."""
    return _finetune(net, card, episodes, labels, settings, "all", augment=True)


def balanced(logits: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Class probabilities rescaled (Sinkhorn) so that every class takes an equal share of the episodes
    while each episode's still sum to one: a recording of every jamo about equally often, as
    calibration asks for, keeps pseudo-labels from piling onto the classes the base model favours."""
    p = torch.softmax(logits.double(), 1)
    for _ in range(iterations):
        p = p / p.sum(0, keepdim=True) * (len(p) / p.shape[1])
        p = p / p.sum(1, keepdim=True)
    return p.float()


@adaptation("selftrain")
def selftrain(net, card: ModelCard, episodes, labels, settings) -> tuple[nn.Module, ModelCard]:
    """Self-training on the person's unlabelled episodes (`settings["unlabelled"]`): `rounds` times,
    the current model labels them (balanced over classes), and a copy of the network it was given is
    fine-tuned on the shots plus the most confident share of each class's pseudo-labels, a share that
    grows each round (1/rounds, 2/rounds, ..., all: a curriculum); `epochs` steps of `lr`, each adding
    `pseudo_batch` pseudo-labelled episodes to the shots. Chained after a fine-tune on the shots
    (`finetune_all+selftrain`), its first labels are already the person's."""
    pool = settings.get("unlabelled") or []
    if not pool:
        raise ValueError("selftrain: no unlabelled episodes of the person to read")
    current, x = net, [torch.from_numpy(a) for a in data.model_inputs(pool, card)]
    for r in range(1, settings["rounds"] + 1):
        with torch.no_grad():
            confidence, guess = balanced(current.eval()(*x)).max(1)
        keep = []
        for c in guess.unique():
            mine = torch.nonzero(guess == c).flatten()
            order = confidence[mine].argsort(descending=True)
            keep.append(mine[order[: -(-len(mine) * r // settings["rounds"])]])
        keep = torch.cat(keep)
        pseudo = (x[0][keep], x[1][keep], guess[keep])
        current, _ = _finetune(net, card, episodes, labels, settings, "all", pseudo=pseudo)
    return current, card


def check_methods(methods: list[str], key: str = "calibration.methods") -> None:
    for method in methods:
        for step in str(method).split("+"):
            parse_step(step, key)


def adapt(
    net: nn.Module,
    card: ModelCard,
    episodes: list[np.ndarray],
    labels: np.ndarray,
    method: str,
    settings: dict,
) -> tuple[nn.Module, ModelCard]:
    """`method` (e.g. `renorm+prototype`) applied in order; the network is copied, never changed. A
    long episode calibrates as the windows the model reads of it (`data.windows`), each labelled."""
    check_methods([method])
    episodes, owners = data.windows(episodes, card.seq_len)
    labels = np.asarray(labels)[owners]
    if settings.get("unlabelled"):
        settings = {**settings, "unlabelled": data.windows(settings["unlabelled"], card.seq_len)[0]}
    torch.manual_seed(settings.get("seed", 0))
    for step in method.split("+"):
        name, own = parse_step(step)
        net, card = ADAPTATIONS[name](net, card, episodes, labels, {**settings, **own})
    return net, card


def evaluate(net: nn.Module, card: ModelCard, episodes: list[np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy, macro F1 and the mean negative log-likelihood (`loss`) of a model on raw episodes,
    read as at inference (`Recognizer`)."""
    probabilities = Recognizer.from_torch(net, card).probabilities(episodes)
    truth = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    loss = float(-np.log(np.clip(truth, 1e-12, None)).mean())
    return {**classification_metrics(labels, probabilities.argmax(1)), "loss": loss}


def metric_name(method: str) -> str:
    """Lightning's MLflow logger keeps only '_', '/', '.' and ' ' of punctuation in a metric name:
    `renorm+finetune_all:lr=0.003` is logged as `renorm.finetune_all.lr_0.003`."""
    return method.replace("+", ".").replace(":", ".").replace("=", "_")


def reads_unlabelled(method: str) -> bool:
    return any(parse_step(step)[0] in UNLABELLED for step in method.split("+"))


def label_free(method: str) -> bool:
    """Whether `method` calibrates from the person's recordings with no labelled shot (k = 0)."""
    return all(parse_step(step)[0] in LABEL_FREE for step in method.split("+"))


def at_zero_shots(methods: list[str]) -> list[str]:
    """The methods measured at k = 0 beside the model as trained: those that need no shot and read
    the person's unlabelled episodes (one that reads none would have nothing to calibrate on)."""
    return [m for m in methods if label_free(m) and reads_unlabelled(m)]


def _calibrate_and_test(net, card, episodes, labels, calib, rest, method: str, settings: dict) -> dict:
    """Accuracy and loss on the `rest` after calibrating with the `calib` episodes. A method that reads
    unlabelled episodes never reads those it is tested on: the rest is cut in two halves (seeded), each
    half's model reads the other half unlabelled and is tested on its own, and the scores pool both."""
    shots = [episodes[i] for i in calib]
    if not reads_unlabelled(method):
        tuned, tuned_card = adapt(net, card, shots, labels[calib], method, settings)
        return evaluate(tuned, tuned_card, [episodes[i] for i in rest], labels[rest])
    halves = data.halves(rest, settings["seed"])
    scores = []
    for tested, read in (halves, halves[::-1]):
        own = {**settings, "unlabelled": [episodes[i] for i in read]}
        tuned, tuned_card = adapt(net, card, shots, labels[calib], method, own)
        scores.append(
            (len(tested), evaluate(tuned, tuned_card, [episodes[i] for i in tested], labels[tested]))
        )
    return {name: sum(n * s[name] for n, s in scores) / len(rest) for name in ("acc", "loss")}


def few_shot_grid(net: nn.Module, card: ModelCard, episodes, labels: np.ndarray, settings: dict) -> dict:
    """Metrics `fewshot/<method>/k<k>/draw<d>/acc` and `.../loss` (and their means over draws,
    `.../k<k>/acc`; a chain's `+` logged as `.`) on a signer the network never saw: each draw's k
    episodes per class calibrate, the rest are tested. k = 0 is the base model on all of the signer's
    episodes (method `none`) and each label-free method that reads unlabelled episodes (`selftrain`),
    cross-fitted on halves of them (one cut, no draws)."""
    check_methods(settings["methods"])
    before = evaluate(net, card, episodes, labels)
    metrics = {"fewshot/none/k0/acc": before["acc"], "fewshot/none/k0/loss": before["loss"]}
    every, none = np.arange(len(labels)), np.zeros(0, np.int64)
    for method in at_zero_shots(settings["methods"]):
        scores = _calibrate_and_test(net, card, episodes, labels, none, every, method, settings)
        metrics.update({f"fewshot/{metric_name(method)}/k0/{name}": scores[name] for name in ("acc", "loss")})
    for k in sorted(int(k) for k in settings["shots"] if int(k) > 0):
        for draw in range(settings["draws"]):
            calib, rest = data.draw_shots(labels, k, settings["seed"] + draw)
            for method in settings["methods"]:
                scores = _calibrate_and_test(net, card, episodes, labels, calib, rest, method, settings)
                for name in ("acc", "loss"):
                    metrics[f"fewshot/{metric_name(method)}/k{k}/draw{draw}/{name}"] = scores[name]
    over_draws = defaultdict(list)
    for key, value in metrics.items():
        if "/draw" in key:
            cell, score = key.split("/draw")
            over_draws[f"{cell}/{score.split('/')[1]}"].append(value)
    return {**metrics, **{k: float(np.mean(v)) for k, v in over_draws.items()}}
