"""Live recognition: glove CSV lines -> samples -> signs segmented from the continuous stream."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from signglove_exp.inference.recognizer import Recognizer


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
