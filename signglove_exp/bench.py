"""Inference latency of the four architectures, PyTorch eager (upstream's engine) vs ONNX Runtime.

    python -m signglove_exp.bench [--repeats 200]      (or: make bench)

Per-episode p50/p99 wall time on this machine's CPU, for one episode at a time and for batches of
64 (batch time / 64), on real test-split episodes. Weights do not change the cost, so each
architecture runs with its reference hyper-parameters.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from signglove_exp import command


def timings(fn, batches: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> np.ndarray:
    for x, lengths in batches[:5]:
        fn(x, lengths)  # warm-up
    out = []
    for i in range(repeats):
        x, lengths = batches[i % len(batches)]
        started = time.perf_counter()
        fn(x, lengths)
        out.append((time.perf_counter() - started) * 1000 / len(x))
    return np.array(out)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per cell (default 200)")
    args = ap.parse_args(argv)

    import torch

    from signglove_exp import data
    from signglove_exp.card import ModelCard
    from signglove_exp.inference.onnx_export import export_onnx
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.models import ARCHITECTURES
    from signglove_exp.training.cli import compose

    cfg = compose()
    prepared = data.prepare(cfg.data, cfg.split)
    x, lengths, _ = prepared.arrays["test"]
    singles = [(x[i : i + 1], lengths[i : i + 1]) for i in range(len(x))]
    batches = [(x[i : i + 64], lengths[i : i + 64]) for i in range(0, len(x) - 63, 64)]
    lines = [
        f"CPU threads: torch {torch.get_num_threads()}, ONNX Runtime default; {args.repeats} calls per cell",
        "",
        "| model | engine | single p50 ms | single p99 ms | batch-64 p50 ms/ep. | batch-64 p99 ms/ep. |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in ARCHITECTURES:
            card = ModelCard(
                model={"name": name, "n_channels": x.shape[2], "n_classes": len(prepared.corpus.classes)},
                classes=prepared.corpus.classes,
                channels=prepared.corpus.channels,
                seq_len=prepared.seq_len,
                padding=dict(cfg.data.padding),
                scaler=prepared.scaler,
            )
            net = card.build_net()
            engines = {"PyTorch eager": Recognizer.from_torch(net, card).run}
            onnx_path = export_onnx(net, card, Path(tmp) / f"{name}.onnx")
            engines["ONNX Runtime"] = Recognizer.from_onnx(onnx_path).run
            for engine, run in engines.items():
                one, many = timings(run, singles, args.repeats), timings(run, batches, args.repeats)
                lines.append(
                    f"| {name} | {engine} | {np.percentile(one, 50):.3f} | {np.percentile(one, 99):.3f} "
                    f"| {np.percentile(many, 50):.3f} | {np.percentile(many, 99):.3f} |"
                )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    command(main)
