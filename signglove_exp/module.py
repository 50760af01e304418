"""The one LightningModule: wraps any architecture with loss, metrics, optimiser and scheduler."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from torch import nn

from signglove_exp.models import build_model


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Plain accuracy next to upstream's 'accuracy' (balanced) and the macro scores."""
    labels = list(range(n_classes))
    macro = {"average": "macro", "labels": labels, "zero_division": 0}
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, **macro)),
        "precision_macro": float(precision_score(y_true, y_pred, **macro)),
        "recall_macro": float(recall_score(y_true, y_pred, **macro)),
    }


class Classifier(pl.LightningModule):
    """`meta` (classes, channels, scaler, model config, ...) is written into every checkpoint."""

    def __init__(self, net: nn.Module, optimizer: Callable, scheduler: Callable | None, meta: dict):
        super().__init__()
        self.net, self.optimizer, self.scheduler, self.meta = net, optimizer, scheduler, meta
        self.n_classes = len(meta["classes"])
        self.loss = nn.CrossEntropyLoss()
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_confusion: np.ndarray | None = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x, lengths)

    def training_step(self, batch, batch_idx):
        x, lengths, y = batch
        loss = self.loss(self(x, lengths), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch):
        x, lengths, y = batch
        logits = self(x, lengths)
        self._outputs.append((self.loss(logits, y) * len(y), logits.argmax(1), y))

    def _gather(self):
        losses, preds, ys = zip(*self._outputs, strict=True)
        self._outputs.clear()
        y = torch.cat(ys)
        return float(torch.stack(losses).sum() / len(y)), torch.cat(preds).cpu().numpy(), y.cpu().numpy()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        loss, pred, y = self._gather()
        m = classification_metrics(y, pred, self.n_classes)
        self.log_dict({"val/loss": loss, "val/acc": m["acc"], "val/f1_macro": m["f1_macro"]})

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        loss, pred, y = self._gather()
        metrics = {"loss": loss, **classification_metrics(y, pred, self.n_classes)}
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        self.test_confusion = confusion_matrix(y, pred, labels=list(range(self.n_classes)))

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler(optimizer),
                "monitor": "val/loss",
                "interval": "epoch",
            },
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["signglove"] = self.meta


def load_checkpoint(path) -> tuple[nn.Module, dict]:
    """Rebuild the trained network from a checkpoint alone: architecture, weights and `meta`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "signglove" not in ckpt:
        raise ValueError(f"{path}: not a signglove-exp checkpoint (no 'signglove' entry)")
    meta = ckpt["signglove"]
    net = build_model(**meta["model"])
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    return net.eval(), meta


@torch.no_grad()
def latency_ms(net: nn.Module, x: torch.Tensor, lengths: torch.Tensor, repeats: int = 50) -> float:
    """Median wall time of one single-episode forward pass on this machine's CPU, in ms."""
    net.eval()
    times = []
    for i in range(repeats + 5):
        j = i % len(x)
        started = time.perf_counter()
        net(x[j : j + 1], lengths[j : j + 1])
        times.append(time.perf_counter() - started)
    return float(np.median(times[5:]) * 1000)
