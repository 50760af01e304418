"""Training speed against upstream's recipe, measured side by side in one run.

    python -m signglove_exp.bench_train [--epochs 3] [--repeats 3] [--sweep]    (or: make bench-train)

Every measurement is a process of its own, the two sides interleaved (which goes first alternates):
this project's training command as a user runs it (`python -m signglove_exp model=...`, MLflow store,
checkpoints and all) and upstream's recipe (`signglove_exp.benchmarks.upstream_recipe`: its layers
in a plain Lightning loop) over the same arrays, both on this machine's default threads. An epoch is
training plus validation; the first epoch of each process is left out (one-off warm-up). Fixed cost
is the process's wall time before its first epoch and after its last. `--sweep` also times the
four-model sweep at full settings on both sides (up to 100 epochs, the same early stopping): long.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from signglove_exp import command, default_outputs

MODELS = ("gru", "stacked_gru", "ms3d_gru", "ms3d_stacked_gru")


def data_overrides(outputs: Path) -> list[str]:
    """Both sides read the episodes and the parsed cache under the project's outputs/."""
    return [f"data.unpack_to={outputs / 'data' / 'signglove'}", f"data.cache_dir={outputs / 'cache'}"]


def ours(model: str | None, work: Path, outputs: Path, timer: Path, *overrides: str) -> list[str]:
    """This project's command line for one run (or, with model None, a sweep preset that names the
    models: a model= here would override its list), its MLflow store and run folders in `work`."""
    return [
        *(
            sys.executable,
            "-m",
            "signglove_exp",
            *([f"model={model}"] if model else []),
            f"paths.outputs={work}",
        ),
        *data_overrides(outputs),
        "+callbacks.epoch_timer._target_=signglove_exp.benchmarks.epoch_timer.EpochTimer",
        *(f"+callbacks.epoch_timer.path={timer}", *overrides),
    ]


def upstream(model: str, outputs: Path, timer: Path, max_epochs: int) -> list[str]:
    return [
        *(sys.executable, "-m", "signglove_exp.benchmarks.upstream_recipe", "--model", model),
        *("--max-epochs", str(max_epochs), "--timer", str(timer), *data_overrides(outputs)),
    ]


def timed(cmd: list[str], timer: Path) -> dict:
    """Run one process; its epochs (wall, CPU) and its fixed cost before and after them."""
    from signglove_exp.benchmarks.epoch_timer import epoch_times

    timer.unlink(missing_ok=True)
    launched = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-2000:]}")
    marks = json.loads(timer.read_text(encoding="utf-8"))
    first = next(m["wall"] for m in marks if m["event"] == "epoch_start")
    last = [m["wall"] for m in marks if m["event"] == "epoch_end"][-1]
    return {"epochs": epoch_times(marks), "before_s": first - launched, "after_s": ended - last}


def stats(values: list[float]) -> str:
    return f"{min(values):.2f} / {float(np.median(values)):.2f}"


def epoch_table(results: dict, models: list[str]) -> list[str]:
    lines = [
        "| model | side | epoch wall s, min / median | epoch CPU s, min / median | speed-up (median wall) |",
        "|---|---|---:|---:|---:|",
    ]
    for m in models:
        median = {}
        for side in ("upstream recipe", "signglove-exp"):
            epochs = [e for r in results[m][side] for e in r["epochs"][1:]]
            walls, cpus = [w for w, _ in epochs], [c for _, c in epochs]
            median[side] = float(np.median(walls))
            speedup = f"{median['upstream recipe'] / median[side]:.2f}x" if side == "signglove-exp" else ""
            lines.append(f"| {m} | {side} | {stats(walls)} | {stats(cpus)} | {speedup} |")
    return lines


def fixed_table(results: dict, models: list[str]) -> list[str]:
    lines = [
        "| model | side | before first epoch s, min / median | after last epoch s, min / median |",
        "|---|---|---:|---:|",
    ]
    for m in models:
        for side in ("upstream recipe", "signglove-exp"):
            runs = results[m][side]
            before, after = [r["before_s"] for r in runs], [r["after_s"] for r in runs]
            lines.append(f"| {m} | {side} | {stats(before)} | {stats(after)} |")
    return lines


def load_times(outputs: Path, repeats: int) -> list[str]:
    """Cold (parse every CSV) and warm (read the cache) data preparation, each in a fresh process.
    scikit-learn (the splits) is imported before the clock and timed on its own: a training process
    imports it anyway, for its metrics."""
    code = (
        "import sys, time; from signglove_exp import data; from signglove_exp.training.cli import compose; "
        "cfg = compose(f'data.unpack_to={sys.argv[1]}', f'data.cache_dir={sys.argv[2]}'); "
        "t = time.perf_counter(); import sklearn.model_selection; i = time.perf_counter() - t; "
        "t = time.perf_counter(); data.prepare(cfg.data, cfg.split); print(i, time.perf_counter() - t)"
    )
    root = outputs / "data" / "signglove"
    times = {"import": [], "cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            for kind in ("cold", "warm"):
                cmd = [sys.executable, "-c", code, str(root), cache]
                imported, prepared = subprocess.run(cmd, capture_output=True, text=True).stdout.split()[-2:]
                times["import"].append(float(imported))
                times[kind].append(float(prepared))
    rows = {
        "cold: parse every CSV": times["cold"],
        "warm: from the cache": times["warm"],
        "importing scikit-learn, once per process (not counted above)": times["import"],
    }
    return [
        "| data preparation (2,884 episodes, split, scaler) | min s | median s |",
        "|---|---:|---:|",
        *(f"| {name} | {min(v):.2f} | {float(np.median(v)):.2f} |" for name, v in rows.items()),
    ]


def sweep_times(outputs: Path, work: Path, max_epochs: int) -> list[str]:
    """The four models one after another at full settings: upstream's recipe, then `sweep=all_models`."""
    timer = work / "sweep-timer.json"
    walls, epochs = {}, {}
    started = time.time()
    runs = [timed(upstream(m, outputs, timer, max_epochs), timer) for m in MODELS]
    walls["upstream recipe"] = time.time() - started
    epochs["upstream recipe"] = [len(r["epochs"]) for r in runs]
    started = time.time()
    cmd = ours(None, work, outputs, timer, "sweep=all_models", f"trainer.max_epochs={max_epochs}")
    subprocess.run(cmd, check=True, capture_output=True)
    walls["signglove-exp"] = time.time() - started
    trained = list((work / "multirun").glob("*/*/checkpoints/last.ckpt"))  # <time>/<job>_<model>/
    if len(trained) != len(MODELS):
        raise RuntimeError(
            f"the sweep left {len(trained)} trained runs under {work / 'multirun'}, not {len(MODELS)}"
        )
    epochs["signglove-exp"] = [
        _epochs_of(p) for p in sorted(trained, key=lambda p: int(p.parts[-3].split("_")[0]))
    ]
    lines = [
        f"| four-model sweep, max {max_epochs} epochs, early stopping patience 15 | wall s | epochs run |",
        "|---|---:|---|",
    ]
    for side in ("upstream recipe", "signglove-exp"):
        lines.append(f"| {side} | {walls[side]:.0f} | {', '.join(map(str, epochs[side]))} |")
    return lines


def _epochs_of(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]) + 1


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        prog="python -m signglove_exp.bench_train", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all four)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per process; the first is not counted")
    ap.add_argument("--repeats", type=int, default=3, help="processes per model and side (default 3)")
    ap.add_argument(
        "--trainer",
        default="cpu",
        help="this project's trainer preset in the per-epoch runs (default cpu; cpu_bf16: bfloat16)",
    )
    ap.add_argument("--sweep", action="store_true", help="also time the four-model sweep (about an hour)")
    ap.add_argument("--max-epochs", type=int, default=100, help="epoch limit of --sweep (default 100)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if unknown := set(models) - set(MODELS):
        raise ValueError(f"--models: unknown {', '.join(sorted(unknown))}; known: {', '.join(MODELS)}")
    if args.epochs < 2:
        raise ValueError("--epochs must be at least 2 (the first epoch is not counted)")

    outputs = default_outputs()
    results = {m: {"upstream recipe": [], "signglove-exp": []} for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        work, timer = Path(tmp), Path(tmp) / "timer.json"
        timed(ours("gru", work, outputs, timer, "trainer.max_epochs=2"), timer)  # store, episodes, cache
        for rep in range(args.repeats):
            for m in models:
                sides = {
                    "upstream recipe": upstream(m, outputs, timer, args.epochs),
                    "signglove-exp": ours(
                        m,
                        work,
                        outputs,
                        timer,
                        f"trainer={args.trainer}",
                        f"trainer.max_epochs={args.epochs}",
                    ),
                }
                for side in sorted(sides, reverse=rep % 2 == 1):
                    results[m][side].append(timed(sides[side], timer))
                    print(f"repeat {rep + 1}/{args.repeats}, {m}, {side}: done", file=sys.stderr, flush=True)
        tables = [
            f"{os.cpu_count()} CPUs; {args.repeats} runs a cell, {args.epochs - 1} counted epoch(s) each; "
            f"this project with trainer={args.trainer}",
            "",
            *epoch_table(results, models),
            "",
            *fixed_table(results, models),
            "",
            *load_times(outputs, args.repeats),
        ]
        if args.sweep:
            tables += ["", *sweep_times(outputs, work, args.max_epochs)]
    table = "\n".join(tables)
    print(table)
    return table


if __name__ == "__main__":
    command(main)
