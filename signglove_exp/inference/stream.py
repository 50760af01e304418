"""Live recognition: glove CSV lines -> samples -> signs segmented from the continuous stream."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from signglove_exp.inference.recognizer import Recognizer

MAX_LINE = 10_000  # a glove line is ~100 characters: anything this long is a glitch, not a sample


class StreamHeaderError(ValueError):
    """A stream header lacking a channel the model needs: guessing the columns would give wrong jamo."""


def stream_rows(lines: Iterable[str | bytes], channels: list[str]) -> Iterator[np.ndarray]:
    """Glove CSV lines (a header first, then one sample per line) -> samples in `channels` order.

    A live stream must survive a glitch: a bad line (not UTF-8, over-long, wrong field count,
    non-numeric or non-finite) is reported on stderr and skipped. Bytes lines are decoded here, one
    by one, so one bad byte costs one line. A line naming a model channel is a header: a glove
    restarted with another column order is re-read, never parsed with the old positions, and one
    lacking a channel is refused (StreamHeaderError).
    """
    header: list[str] | None = None
    for n, raw in enumerate(lines, start=1):
        try:
            if len(raw) > MAX_LINE:
                raise ValueError(f"longer than {MAX_LINE} characters")
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if not line.strip():
                continue
            fields = [f.strip() for f in next(csv.reader([line]))]
        except (ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
            _skip(n, str(e), raw)
            continue
        if header is None or not set(fields).isdisjoint(channels):
            missing = [c for c in channels if c not in fields]
            if missing:
                raise StreamHeaderError(
                    f"stream line {n}: header lacks column(s) {', '.join(missing)}: {line.strip()[:80]}"
                )
            if header is not None:
                note = "same header again" if fields == header else "new header, columns re-read"
                print(f"stream line {n}: {note}", file=sys.stderr)
            header, cols = fields, [fields.index(c) for c in channels]
            continue
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, header has {len(header)}")
            row = np.array([float(fields[j]) for j in cols])
        except ValueError as e:
            _skip(n, str(e), raw)
            continue
        if not np.all(np.isfinite(row)):
            _skip(n, "non-finite value", raw)
            continue
        yield row
    if header is None:
        print("stream: ended without a header line, nothing to recognise", file=sys.stderr)


def _skip(n: int, reason: str, raw: str | bytes) -> None:
    text = raw[:200].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:200]
    print(f"stream line {n}: skipped, {reason}: {text.strip()[:80]!r}", file=sys.stderr)  # repr: one line


def follow(path: Path, poll_s: float = 0.05, idle_s: float | None = None) -> Iterator[bytes]:
    """Lines of a file as they are appended (like `tail -f`); ends after idle_s without new data.

    Bytes, not text: stream_rows decodes each line, so an undecodable line is skipped, not fatal.
    """
    with open(path, "rb") as f:
        pending, quiet = b"", 0.0
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending
                    pending, quiet = b"", 0.0
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

    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser) -> None:
        """Each setting as a command-line option (`--min-samples 40`), for every command that segments."""
        for f in fields(StreamSettings):
            ap.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=type(f.default),
                default=f.default,
                help=f"segmentation: {f.metadata['help']} (default {f.default})",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StreamSettings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


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
                    "top": preds[k].top(3),
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
