"""Inference latency and accuracy of the four architectures: PyTorch eager (upstream's engine) against
ONNX Runtime, float32 and, for the MS3D models, with 8-bit convolutions.

    python -m signglove_exp.bench [--repeats 200]      (or: make bench)

The networks are upstream's four trained checkpoints (one per architecture, bundled), run as upstream
ran them, on upstream's reference test split, so each engine's accuracy sits beside its speed. The
engines of one model are timed interleaved, in turns of 20 calls, one episode at a time and in
batches of 64 (batch time / 64); p50 and p99 per episode. The int8 graph is calibrated on 256 episodes of the
training part (`python -m signglove_exp.export MODEL --int8 256`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from signglove_exp import BUNDLED_DIR, command

CHECKPOINTS = {  # upstream's trained checkpoints, one per architecture
    "gru": "epoch92-valloss0.04.ckpt",
    "stacked_gru": "epoch68-valloss0.19.ckpt",
    "ms3d_gru": "best_model-ms3dgru_best.ckpt",
    "ms3d_stacked_gru": "epoch82-valloss0.05.ckpt",
}
INT8_EPISODES = 256  # training episodes the int8 graphs are calibrated on


def interleaved(
    engines: dict, batches: list[tuple[np.ndarray, np.ndarray]], repeats: int, turn: int = 20
) -> dict:
    """Per engine, `repeats` wall times per episode in ms, the engines taking turns of `turn` calls
    (call by call, one engine's idle threads would still be spinning in the next one's time)."""
    times = {name: [] for name in engines}
    for start in range(0, repeats, turn):
        for name, run in engines.items():
            for x, lengths in batches[:3]:
                run(x, lengths)  # back from the other engine: caches and threads warm again
            for i in range(start, min(start + turn, repeats)):
                x, lengths = batches[i % len(batches)]
                started = time.perf_counter()
                run(x, lengths)
                times[name].append((time.perf_counter() - started) * 1000 / len(x))
    return {name: np.array(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per cell (default 200)")
    ap.add_argument(
        "--onnx-threads",
        type=int,
        default=1,
        help="ONNX Runtime's threads (default 1, as `serve`; 0: its default)",
    )
    ap.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    args = ap.parse_args(argv)

    import torch

    from signglove_exp import data
    from signglove_exp.export import calibration_inputs
    from signglove_exp.inference.evaluation import episodes_to_evaluate
    from signglove_exp.inference.onnx_export import export_onnx
    from signglove_exp.inference.recognizer import Recognizer
    from signglove_exp.training.cli import compose
    from signglove_exp.upstream.convert import import_checkpoint
    from signglove_exp.upstream.scaler import read_scaler_pickle

    threads = args.onnx_threads
    cfg = compose()
    scaler = read_scaler_pickle(BUNDLED_DIR / "legacy" / "scaler.pkl", list(cfg.data.channels))
    lines = [
        f"CPU threads: torch {torch.get_num_threads()}, ONNX Runtime {threads or 'default'}; "
        f"{args.repeats} calls per cell",
        "",
        "| model | engine | test acc | single p50 ms | single p99 ms | batch-64 p50 ms/ep. "
        "| batch-64 p99 ms/ep. |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            net, card = import_checkpoint(BUNDLED_DIR / "legacy" / CHECKPOINTS[name], scaler, cfg)
            rec = Recognizer.from_torch(net, card)
            corpus, idx, _ = episodes_to_evaluate(rec, None)
            x, lengths = data.model_inputs([corpus.episodes[i].values for i in idx], card)
            y = np.array([corpus.episodes[i].label for i in idx])
            engines = {
                "PyTorch eager": rec.run,
                "ONNX Runtime": Recognizer.from_onnx(
                    export_onnx(net, card, Path(tmp) / f"{name}.onnx"), threads
                ).run,
            }
            if name.startswith("ms3d"):
                int8 = export_onnx(
                    net, card, Path(tmp) / f"{name}-int8.onnx", calibration_inputs(rec, INT8_EPISODES)
                )
                engines["ONNX Runtime int8"] = Recognizer.from_onnx(int8, threads).run
            singles = [(x[i : i + 1], lengths[i : i + 1]) for i in range(len(x))]
            batches = [(x[i : i + 64], lengths[i : i + 64]) for i in range(0, len(x) - 63, 64)]
            one, many = (
                interleaved(engines, singles, args.repeats),
                interleaved(engines, batches, args.repeats),
            )
            for engine, run in engines.items():
                acc = float((run(x, lengths).argmax(1) == y).mean())
                cells = [np.percentile(t, q) for t in (one[engine], many[engine]) for q in (50, 99)]
                lines.append(
                    f"| {name} | {engine} | {acc:.4f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"
                )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    command(main)
