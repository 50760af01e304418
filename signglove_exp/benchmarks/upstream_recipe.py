"""Upstream's recipe, kept as the baseline of the training benchmark and the reference of the
parity tests: its layer definitions (Conv3d towers over a (time, 4, 2) volume, recurrences over
every padded step) in a straightforward Lightning loop, with its optimiser, schedule, early stopping
and one-batch validation, over the same arrays this project trains on.

    python -m signglove_exp.benchmarks.upstream_recipe --model ms3d_gru --max-epochs 3 --timer t.json
"""

from __future__ import annotations

import argparse
import tempfile

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from signglove_exp import command
from signglove_exp.models import build_model, cnn_head, last_step


class UpstreamMS3D(nn.Module):
    """MS3DGRU (`stacked=False`) and MS3DStackedGRU with upstream's nn.Conv3d, BatchNorm3d and MaxPool3d."""

    def __init__(
        self,
        n_channels=8,
        n_classes=24,
        hidden=64,
        filters=32,
        kernels=(3, 5, 7),
        grid=None,
        time_pool=2,
        dropout=0.2,
        readout="upstream",
        stacked=False,
    ):
        super().__init__()
        self.grid, self.time_pool, self.readout, self.stacked = grid or (4, 2), time_pool, readout, stacked
        for i, k in enumerate(kernels, start=1):
            layers = [nn.Conv3d(1, filters, k, padding=k // 2), nn.BatchNorm3d(filters), nn.ReLU()]
            if stacked:
                layers += [nn.Conv3d(filters, filters, 3, padding=1), nn.BatchNorm3d(filters), nn.ReLU()]
            setattr(self, f"tower{i}", nn.Sequential(*layers))
        self.n_towers, width = len(kernels), filters * len(kernels)
        self.cnn_post = nn.Sequential(
            nn.BatchNorm3d(width), nn.ReLU(), nn.MaxPool3d((time_pool, *self.grid)), nn.Dropout3d(dropout)
        )
        if stacked:
            self.gru1, self.gru2 = (
                nn.GRU(width, hidden, batch_first=True),
                nn.GRU(hidden, hidden, batch_first=True),
            )
        else:
            self.gru = nn.GRU(width, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.output_layers = cnn_head(hidden, n_classes, dropout)

    def forward(self, x, lengths):
        b, t, c = x.shape
        rows, cols = self.grid
        x = torch.cat([x, x.new_zeros(b, t, rows * cols - c)], dim=2) if c < rows * cols else x
        vol = x.reshape(b, 1, t, rows, cols)
        out = torch.cat([getattr(self, f"tower{i}")(vol) for i in range(1, self.n_towers + 1)], dim=1)
        seq = self.cnn_post(out).flatten(2).transpose(1, 2)
        seq = self.gru2(self.dropout(self.gru1(seq)[0]))[0] if self.stacked else self.gru(seq)[0]
        return self.output_layers(self.dropout(last_step(seq, lengths, self.time_pool, self.readout)))


def upstream_net(name: str, **hparams) -> nn.Module:
    """Upstream's network for one of this project's model configs (same sizes, so same parameters).
    The plain GRUs are this project's with upstream's readout (index -1), which runs every step."""
    if name in ("gru", "stacked_gru"):
        return build_model(name, **{"readout": "upstream", **hparams})
    if name in ("ms3d_gru", "ms3d_stacked_gru"):
        stacked = name == "ms3d_stacked_gru"
        return UpstreamMS3D(**{"time_pool": 1 if stacked else 2, **hparams}, stacked=stacked)
    raise ValueError(f"upstream has no model {name!r}")


class Recipe(pl.LightningModule):
    """Upstream's training module: AdamW 1e-3 / 1e-3, ReduceLROnPlateau on val/loss."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, lengths, y = batch
        loss = F.cross_entropy(self.net(x, lengths), y)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _evaluate(self, batch, part):
        x, lengths, y = batch
        logits = self.net(x, lengths)
        self.log(f"{part}/loss", F.cross_entropy(logits, y))
        self.log(f"{part}/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=15, min_lr=1e-6
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}


def run(model: str, max_epochs: int, timer: str | None, overrides: list[str], seed: int = 1337) -> dict:
    """Train and test one model by upstream's recipe; returns the test metrics (of the last weights).
    `overrides` are this project's config keys saying where the episodes and their cache are."""
    from omegaconf import OmegaConf

    from signglove_exp import data
    from signglove_exp.benchmarks.epoch_timer import EpochTimer
    from signglove_exp.training.cli import compose

    cfg = compose(f"model={model}", *overrides)
    prepared = data.prepare(cfg.data, cfg.split)
    hparams = {
        k: v
        for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
        if k not in ("name", "readout")
    }
    pl.seed_everything(seed, verbose=False)
    net = upstream_net(
        model, **hparams, n_channels=len(prepared.corpus.channels), n_classes=len(prepared.corpus.classes)
    )
    tensors = {
        p: TensorDataset(*(torch.from_numpy(a) for a in arrays)) for p, arrays in prepared.arrays.items()
    }
    shuffle = torch.Generator().manual_seed(seed)
    train = DataLoader(tensors["train"], batch_size=64, shuffle=True, generator=shuffle)
    val = DataLoader(tensors["val"], batch_size=len(tensors["val"]))  # one batch, as upstream
    test = DataLoader(tensors["test"], batch_size=len(tensors["test"]))
    with tempfile.TemporaryDirectory() as checkpoints:
        callbacks = [
            pl.callbacks.EarlyStopping(monitor="val/loss", patience=15, min_delta=0.001),
            pl.callbacks.ModelCheckpoint(dirpath=checkpoints, monitor="val/loss", save_top_k=1),
            *([EpochTimer(timer)] if timer else []),
        ]
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        module = Recipe(net)
        trainer.fit(module, train, val)
        trainer.test(module, test, verbose=False)  # upstream tested the last epoch's weights
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.benchmarks.upstream_recipe")
    ap.add_argument("--model", required=True, help="gru | stacked_gru | ms3d_gru | ms3d_stacked_gru")
    ap.add_argument(
        "--max-epochs", type=int, default=100, help="upper bound, as upstream (early stopping ends sooner)"
    )
    ap.add_argument("--timer", help="write EpochTimer's clocks to this JSON file")
    ap.add_argument(
        "overrides", nargs="*", help="config keys for the data, e.g. data.root=DIR data.cache_dir=DIR"
    )
    args = ap.parse_args(argv)
    metrics = run(args.model, args.max_epochs, args.timer, args.overrides)
    print(" ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    command(main)
