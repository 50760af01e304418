"""A trained model as a recogniser: raw glove samples in, jamo and probabilities out.

    rec = Recognizer.load("model.ckpt")     # or "model.onnx", or an MLflow run id
    rec.predict(values)                     # values: (n_timepoints, n_channels) in raw sensor units
    rec.predict_files(["a.csv"])            # episode CSVs, columns found by name

    python -m signglove_exp.recognize MODEL episode.csv folder/ [--out predictions.csv]
    glove-reader | python -m signglove_exp.recognize MODEL --stream -      # live, from stdin
    python -m signglove_exp.recognize MODEL --stream capture.csv --follow  # a growing file

The scaler, channel order, sequence length and padding come from the model file itself. torch and
onnxruntime are imported only by the loader that needs them, so an ONNX deployment runs without torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from signglove_exp import data

META_KEY = "signglove"  # where an ONNX file keeps the model's metadata, as JSON


@dataclass
class Prediction:
    jamo: str
    probabilities: dict[str, float]  # every class, in label order

    @property
    def confidence(self) -> float:
        return self.probabilities[self.jamo]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


class Recognizer:
    """`run(x, lengths) -> probabilities` is the network (PyTorch or ONNX Runtime); `meta` feeds it."""

    def __init__(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], meta: dict, net=None):
        self.run, self.meta, self.net = run, meta, net  # net: the torch module, when there is one
        self.classes: list[str] = meta["classes"]
        self.channels: list[str] = meta["channels"]

    @classmethod
    def from_torch(cls, net, meta: dict) -> Recognizer:
        import torch

        net.eval()

        @torch.no_grad()
        def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            return torch.softmax(net(torch.from_numpy(x), torch.from_numpy(lengths)), dim=1).numpy()

        return cls(run, meta, net)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Recognizer:
        from signglove_exp.module import load_checkpoint

        return cls.from_torch(*load_checkpoint(path))

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int = 0) -> Recognizer:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])

        def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            return session.run(["probabilities"], {"x": x, "lengths": lengths})[0]

        return cls(run, meta)

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str | None = None) -> Recognizer:
        from signglove_exp import tracking

        return cls.from_checkpoint(tracking.download_checkpoint(run_id, tracking_uri))

    @classmethod
    def load(cls, model: str | Path, tracking_uri: str | None = None) -> Recognizer:
        """A .onnx file, a checkpoint file, or else an MLflow run id or model URI (runs:/..., models:/...)."""
        path = Path(model)
        if path.suffix == ".onnx":
            return cls.from_onnx(path)
        if path.is_file():
            return cls.from_checkpoint(path)
        return cls.from_run(str(model), tracking_uri)

    def arrays(self, episodes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for i, v in enumerate(episodes):
            if v.ndim != 2 or v.shape[1] != len(self.channels) or len(v) == 0:
                raise ValueError(
                    f"episode {i}: shape {v.shape}, expected (n_timepoints >= 1, {len(self.channels)}) "
                    f"with channels {', '.join(self.channels)}"
                )
        return data.to_arrays(episodes, self.meta["scaler"], self.meta["seq_len"], self.meta["padding"])

    def probabilities(self, episodes: list[np.ndarray]) -> np.ndarray:
        """(n_cases, n_classes) probabilities for raw episodes."""
        return self.run(*self.arrays(episodes))

    def predict_batch(self, episodes: list[np.ndarray]) -> list[Prediction]:
        return [
            Prediction(self.classes[int(p.argmax())], dict(zip(self.classes, p.tolist(), strict=True)))
            for p in self.probabilities(episodes)
        ]

    def predict(self, episode: np.ndarray) -> Prediction:
        return self.predict_batch([episode])[0]

    def read(self, path: str | Path) -> np.ndarray:
        """One episode CSV in this model's channel order; a file that does not fit is a clear error."""
        values, reason = data.read_episode(Path(path), self.channels, 1)
        if reason:
            raise data.BadEpisodeError(f"{path}: {reason}")
        return values

    def predict_files(self, paths: Iterable[str | Path]) -> list[Prediction]:
        return self.predict_batch([self.read(p) for p in paths])


def stream_rows(lines: Iterable[str], channels: list[str]) -> Iterator[np.ndarray]:
    """Glove CSV lines (a header first, then one sample per line) -> samples in `channels` order.

    A malformed line is reported on stderr and skipped: a live stream must survive a glitch.
    """
    lines = iter(lines)
    header = next(csv.reader([next(lines)]))
    header = [h.strip() for h in header]
    missing = [c for c in channels if c not in header]
    if missing:
        raise ValueError(f"stream header lacks column(s) {', '.join(missing)}: {','.join(header)}")
    cols = [header.index(c) for c in channels]
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        try:
            row = np.array([float(fields[j]) for j in cols])
        except (ValueError, IndexError):
            print(
                f"stream line {n}: skipped, not {len(header)} numeric fields: {line.strip()[:80]}",
                file=sys.stderr,
            )
            continue
        if np.all(np.isfinite(row)):
            yield row


def follow(path: Path, poll_s: float = 0.05, idle_s: float | None = None) -> Iterator[str]:
    """Lines of a file as they are appended (like `tail -f`); ends after idle_s without new data."""
    with open(path, encoding="utf-8") as f:
        pending, quiet = "", 0.0
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending, quiet = "", 0.0
                continue
            if idle_s is not None and quiet >= idle_s:
                if pending:
                    yield pending
                return
            time.sleep(poll_s)
            quiet += poll_s


@dataclass
class StreamSettings:
    window: int = field(
        default=80, metadata={"help": "longest sign, in samples (bundled episodes: at most 80)"}
    )
    min_samples: int = field(default=40, metadata={"help": "shortest sign, in samples"})
    hop: int = field(default=1, metadata={"help": "candidate sign ends are tried this many samples apart"})
    threshold: float = field(default=0.8, metadata={"help": "top probability a sign needs to be emitted"})
    stable: int = field(
        default=2, metadata={"help": "neighbouring candidate ends that must agree on the jamo"}
    )


def recognise_stream(rec: Recognizer, rows: Iterable[np.ndarray], settings: StreamSettings) -> Iterator[dict]:
    """Segment a continuous stream into signs and emit each sign's jamo once.

    The window holds the samples since the last emitted sign. Once it spans `window` samples, every
    candidate end from `min_samples` on is classified in one batch; the latest end whose prediction is
    confident, and agrees with its `stable - 1` earlier neighbours, closes the sign: its jamo is
    emitted and the window restarts there. With no confident end, the window slides by `hop` samples
    (noise or a transition between signs is dropped).
    """
    buffer: list[np.ndarray] = []
    seen = 0

    def decide(final: bool) -> dict | None:
        ends = list(range(settings.min_samples, len(buffer) + 1, settings.hop))
        if not ends:
            return None
        started = time.perf_counter()
        preds = rec.predict_batch([np.stack(buffer[:e]) for e in ends])
        latency_ms = (time.perf_counter() - started) * 1000
        for k in range(len(ends) - 1, settings.stable - 2, -1):
            run = preds[k - settings.stable + 1 : k + 1]
            if all(p.jamo == preds[k].jamo and p.confidence >= settings.threshold for p in run):
                event = {
                    "sample": seen - len(buffer) + ends[k],
                    "jamo": preds[k].jamo,
                    "confidence": preds[k].confidence,
                    "latency_ms": latency_ms,
                }
                del buffer[: ends[k]]
                return event
        del buffer[: len(buffer) if final else settings.hop]
        return None

    for row in rows:
        buffer.append(row)
        seen += 1
        if len(buffer) >= settings.window and (event := decide(final=False)):
            yield event
    while len(buffer) >= settings.min_samples and (event := decide(final=True)):
        yield event


def _episode_files(inputs: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(p.rglob("*.csv"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def _print_stream(rec: Recognizer, lines: Iterable[str], settings: StreamSettings) -> list[dict]:
    events = []
    for event in recognise_stream(rec, stream_rows(lines, rec.channels), settings):
        print(f"{event['sample']}\t{event['jamo']}\t{event['confidence']:.3f}", flush=True)
        events.append(event)
    return events


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m signglove_exp.recognize", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a checkpoint, a .onnx file, an MLflow run id or model URI")
    ap.add_argument("inputs", nargs="*", help="episode CSV files or folders of them")
    ap.add_argument("--out", type=Path, help="also write the predictions to this CSV file")
    ap.add_argument(
        "--tracking-uri", help="for a run id: default $MLFLOW_TRACKING_URI, else outputs/mlflow.db"
    )
    ap.add_argument("--stream", metavar="SOURCE", help="recognise a live CSV stream: a file, or - for stdin")
    ap.add_argument("--follow", action="store_true", help="with --stream FILE: wait for lines appended to it")
    ap.add_argument(
        "--idle", type=float, default=None, help="with --follow: stop after this many idle seconds"
    )
    for f in fields(StreamSettings):
        help_text = f"streaming: {f.metadata['help']} (default {f.default})"
        ap.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=help_text
        )
    args = ap.parse_args(argv)
    rec = Recognizer.load(args.model, args.tracking_uri)
    if args.stream:
        settings = StreamSettings(**{f.name: getattr(args, f.name) for f in fields(StreamSettings)})
        if args.stream == "-":
            lines = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
            return _print_stream(rec, lines, settings)
        if args.follow:
            return _print_stream(rec, follow(Path(args.stream), idle_s=args.idle), settings)
        with open(args.stream, encoding="utf-8") as lines:
            return _print_stream(rec, lines, settings)
    files = _episode_files(args.inputs)
    if not files:
        ap.error("no episode files given (or use --stream)")
    rows = []
    for path in files:
        started = time.perf_counter()
        pred = rec.predict(rec.read(path))
        latency = (time.perf_counter() - started) * 1000
        top = pred.top(3)
        rows.append(
            {
                "file": str(path),
                "jamo": pred.jamo,
                "latency_ms": latency,
                **{f"top{i}": f"{j} {p:.3f}" for i, (j, p) in enumerate(top, 1)},
            }
        )
        print(f"{path}\t{pred.jamo}\t" + "  ".join(f"{j} {p:.3f}" for j, p in top) + f"\t{latency:.2f} ms")
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
