"""The one LightningModule: wraps any architecture with loss, metrics, optimiser and scheduler."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from sklearn.metrics import confusion_matrix
from torch import nn

from signglove_exp.card import CARD_KEY, ModelCard
from signglove_exp.metrics import classification_metrics
from signglove_exp.models import batched_logits, last_linear
from signglove_exp.training.augment import Augmenter


class Classifier(pl.LightningModule):
    """The model card is written into every checkpoint. Parts of `net` with no trainable parameter
    (frozen for fine-tuning) stay in eval mode, so their dropout and batch statistics stay fixed too.

    An epoch's train/loss and train/lr reach the logger with its validation metrics, before the
    checkpoint of that epoch is written (Lightning would log them after it): a run killed between
    the two then resumes with every epoch's curves, none lost.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None,
        card: ModelCard,
        augment: Augmenter | None = None,
        supcon: float = 0.0,
        temperature: float = 0.1,
    ):
        super().__init__()
        self.net, self.optimizer, self.scheduler, self.card = net, optimizer, scheduler, card
        self.augment = augment if augment else None  # training batches only
        mixup = dict(augment.steps if augment else ()).get("mixup", 0.0)
        if supcon and mixup:
            raise ValueError(
                f"loss.supcon={supcon} pulls together episodes of one label, but augment.mixup={mixup} "
                "mixes episodes of two: set one of them to 0"
            )
        if supcon < 0 or temperature <= 0:
            raise ValueError(
                f"loss.supcon={supcon}, loss.temperature={temperature}: need supcon >= 0 and temperature > 0"
            )
        self.supcon, self.temperature = supcon, temperature
        self.n_classes = len(card.classes)
        self.frozen = [
            m
            for m in net.children()
            if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
        ]
        self.loss = nn.CrossEntropyLoss()
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._train_losses: list[tuple[torch.Tensor, int]] = []  # this epoch's (summed loss, batch size)
        self.test_confusion: np.ndarray | None = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x, lengths)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def training_step(self, batch, batch_idx):
        x, lengths, y = batch
        target = y
        if self.augment:
            x, lengths, target = self.augment(x, lengths, y, self.n_classes, self.current_epoch, batch_idx)
        if not self.supcon:
            loss = self.loss(self(x, lengths), target)
        else:
            seen = []
            hook = last_linear(self.net).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
            try:
                loss = self.loss(self(x, lengths), target)
            finally:
                hook.remove()
            loss = loss + self.supcon * supervised_contrastive(seen[0], y, self.temperature)
        n = len(y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=n, prog_bar=True, logger=False)
        self._train_losses.append((loss.detach() * n, n))
        return loss

    def _log_training_epoch(self) -> None:
        """The epoch's mean training loss and learning rate, once, for the logger."""
        if not self._train_losses:
            return
        losses, sizes = zip(*self._train_losses, strict=True)
        self._train_losses.clear()
        loss = float(torch.stack(losses).sum() / sum(sizes))
        self.log_dict({"train/loss": loss, "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]})

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
        m = classification_metrics(y, pred)
        self.log_dict({"val/loss": loss, "val/acc": m["acc"]}, prog_bar=True)
        self.log("val/f1_macro", m["f1_macro"])
        if not self.trainer.sanity_checking and self.trainer.is_last_batch:  # the epoch's end, not mid-epoch
            self._log_training_epoch()

    def on_train_epoch_start(self):
        self._train_losses.clear()  # an epoch cut short by a kill is trained again from its start

    def on_train_epoch_end(self):
        self._log_training_epoch()  # when no validation ran this epoch

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        loss, pred, y = self._gather()
        metrics = {"loss": loss, **classification_metrics(y, pred)}
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        self.test_confusion = confusion_matrix(y, pred, labels=list(range(self.n_classes)))

    def configure_optimizers(self):
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
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
        checkpoint[CARD_KEY] = self.card.to_dict()

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, lengths: np.ndarray, y: np.ndarray, batch_size: int = 0) -> dict:
        """Loss and metrics of the current weights on arrays (e.g. the validation part, best weights)."""
        was_training = self.training
        self.eval()
        logits = batched_logits(self.net, x, lengths, batch_size)
        self.train(was_training)
        loss = float(self.loss(logits, torch.from_numpy(y)))
        return {"loss": loss, **classification_metrics(y, logits.argmax(1).numpy())}


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Supervised contrastive loss (Khosla et al., 2020) over a batch: each episode's embedding, on the
    unit sphere, drawn to the batch's other episodes of its class and away from the rest, so that
    class means separate (what prototype calibration reads). Episodes alone in their class in the
    batch anchor nothing."""
    z = nn.functional.normalize(embeddings, dim=1)
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_p = similarity - similarity.logsumexp(1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~itself
    n_positive = positive.sum(1)
    anchors = n_positive > 0
    per_anchor = log_p.masked_fill(~positive, 0.0).sum(1)[anchors] / n_positive[anchors]
    return -per_anchor.mean() if anchors.any() else embeddings.sum() * 0.0


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, showing train/loss, val/loss and val/acc but not the logger's version number."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


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
