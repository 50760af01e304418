"""The live glove: one feed of samples (a serial glove, or samples a client POSTs) that segments signs,
spells text, enrols a new person, and tells every subscriber (the /live page, any SSE client) as it goes.

Threads: the glove's reader and the HTTP handlers `push` samples; one segmenter thread reads them in
order (so signs are cut exactly as `recognize --stream` cuts them) and publishes; an enrolment's
calibration runs in a thread of its own, so the page and /predict keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import csv
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from signglove_exp.inference.hangul import compose
from signglove_exp.inference.recognizer import Prediction, Recognizer
from signglove_exp.inference.stream import StreamSettings, recognise_stream

SUBSCRIBER_BACKLOG = 2000  # events kept for a slow client before its oldest are dropped


@dataclass
class ServedModel:
    rec: Recognizer
    source: str  # what was named: a file, a run id, a model URI
    run_id: str | None  # the MLflow run it came from, where there is one

    def info(self) -> dict:
        card = self.rec.card
        return {
            "name": card.name,
            "source": self.source,
            "run_id": self.run_id,
            "personal": bool(card.lineage.get("method")),
            "adapted": card.lineage.get("adapted"),
            "classes": card.classes,
            "channels": card.channels,
            "seq_len": card.seq_len,
        }


def upstream_result(pred: Prediction, classes: list[str], top_k: int) -> dict:
    """A prediction in upstream KLP-SignGlove's response format; each top-k entry also carries
    `class_name` and `probability`, the names upstream's own page and bridge read."""
    top = [
        {"class": j, "class_idx": classes.index(j), "confidence": p, "class_name": j, "probability": p}
        for j, p in pred.top(top_k)
    ]
    return {
        "predicted_class": pred.jamo,
        "predicted_class_idx": classes.index(pred.jamo),
        "confidence": pred.confidence,
        "top_k_predictions": top,
    }


@dataclass
class EnrolSettings:
    outputs: Path  # enrolment episodes go to outputs/enrolments/<name>-<time>/
    tracking_uri: (
        str | None
    )  # where the personal model's run goes (None: $MLFLOW_TRACKING_URI, else outputs/)
    experiment: str
    method: str | None  # adaptation method; None: calibration.default_method of the config
    lead_in: int  # samples skipped after each prompt while the hand takes the shape


class Enrolment:
    """A new person prompted jamo by jamo, `shots` times each: after each prompt `lead_in` samples are
    let go by, then the next `length` samples are that sign's episode (the live segmenter's longest sign,
    which is a training episode's length),
    written in the corpus layout (`<jamo>/1/episode_....csv`) that `calibrate --data` reads."""

    def __init__(
        self,
        name: str,
        classes: list[str],
        channels: list[str],
        shots: int,
        length: int,
        lead_in: int,
        folder: Path,
    ):
        self.name, self.shots, self.length, self.lead_in, self.folder = name, shots, length, lead_in, folder
        self.channels = channels
        self.plan = [(j, i) for j in classes for i in range(1, shots + 1)]
        self.step, self.phase, self.count = 0, "ready", 0
        self.rows: list[tuple[float, np.ndarray]] = []
        self.run_id: str | None = None
        self.error: str | None = None

    @property
    def capturing(self) -> bool:
        return self.phase in ("ready", "recording")

    def state(self) -> dict:
        jamo, shot = self.plan[self.step] if self.step < len(self.plan) else (None, None)
        return {
            "name": self.name,
            "shots": self.shots,
            "step": self.step,
            "of": len(self.plan),
            "jamo": jamo,
            "shot": shot,
            "phase": self.phase,
            "recorded": len(self.rows),
            "length": self.length,
            "folder": str(self.folder),
            "run_id": self.run_id,
            "error": self.error,
        }

    def take(self, row: np.ndarray, arrived: float) -> bool:
        """One sample; True when the state a person sees changed (a sign recorded, recording began)."""
        if self.phase == "ready":
            self.count += 1
            if self.count < self.lead_in:
                return False
            self.phase, self.count = "recording", 0
            return True
        self.rows.append((arrived, row))
        if len(self.rows) < self.length:
            return False
        self._write(*self.plan[self.step])
        self.step, self.rows = self.step + 1, []
        self.phase = "ready" if self.step < len(self.plan) else "calibrating"
        return True

    def _write(self, jamo: str, shot: int) -> None:
        folder = self.folder / jamo / "1"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self.rows[0][0]).strftime("%Y%m%d_%H%M%S")
        with open(folder / f"episode_{stamp}_{jamo}_{shot}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp_ms", *self.channels])
            start = self.rows[0][0]
            for arrived, row in self.rows:
                w.writerow([round((arrived - start) * 1000), *(f"{v:.6g}" for v in row)])


class LiveFeed:
    BACKLOG = 100_000  # samples waiting for the segmenter before a client is asked to wait

    def __init__(
        self,
        model: ServedModel,
        settings: StreamSettings,
        enrol: EnrolSettings,
        port: str | None,
        engine: Callable[[Recognizer], Recognizer] = lambda rec: rec,
    ):
        self.base = self.model = model
        self.engine = engine  # what runs a model this feed starts serving (an enrolled one)
        self.settings, self.enrol_settings = settings, enrol
        self.glove = {
            "state": "waiting" if port else "samples by POST /samples",
            "port": port,
            "detail": "",
            "since": time.time(),
        }
        self.spelled: list[str] = []  # jamo and spaces, as signed and edited
        self.latest: dict | None = None  # {"ts", "result"}: the last /predict or live sign
        self.last_sign: dict | None = None
        self.samples = 0
        self.enrolment: Enrolment | None = None
        self._rows: queue.Queue = queue.Queue(maxsize=self.BACKLOG)
        self._subscribers: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()
        self._arrived = 0.0
        threading.Thread(target=self._segment, name="segmenter", daemon=True).start()

    # -- subscribers -------------------------------------------------------------------------------
    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_BACKLOG)
        with self._lock:
            self._subscribers[q] = loop
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers.pop(q, None)

    def snapshot(self) -> dict:
        """Everything a newly opened page needs to show the state as it is now."""
        return {
            "model": self.model.info(),
            "glove": self.glove,
            "text": compose(self.spelled),
            "sign": self.last_sign,
            "samples": self.samples,
            "enrol": self.enrolment.state() if self.enrolment else None,
        }

    def publish(self, kind: str, data: dict) -> None:
        message = f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        with self._lock:
            targets = list(self._subscribers.items())
        for q, loop in targets:
            try:
                loop.call_soon_threadsafe(_offer, q, message)
            except RuntimeError:  # its loop is closed: the server is stopping
                self.unsubscribe(q)

    # -- samples in --------------------------------------------------------------------------------
    def push(self, rows: np.ndarray) -> None:
        arrived = time.time()
        for row in rows:
            self._rows.put((row, arrived))

    def room(self) -> int:
        """How many more samples the feed takes now."""
        return self.BACKLOG - self._rows.qsize()

    def set_glove(self, kind: str, detail: str) -> None:
        """The glove reader's news: connected, disconnected, info (a `#` line), error."""
        if kind == "info":
            self.publish("glove", self.glove | {"info": detail})
            return
        if self.glove["state"] == kind and self.glove["detail"] == detail:
            return
        if kind == "disconnected":
            self._rows.put(None)
        self.glove = self.glove | {"state": kind, "detail": detail, "since": time.time()}
        print(f"glove {self.glove['port']}: {detail}", file=sys.stderr, flush=True)
        self.publish("glove", self.glove)

    def read_serial(self, port: str, baud: int, stop: threading.Event) -> None:
        """The glove on `port` as this feed's source, until `stop`; a header lacking a channel the model
        needs is shown as the glove's state until a header that has them comes."""
        from signglove_exp.inference.glove import serial_lines
        from signglove_exp.inference.stream import StreamHeaderError, stream_rows

        lines = serial_lines(port, baud, on_state=self.set_glove, stop=stop)
        while not stop.is_set():
            try:
                for row in stream_rows(lines, self.model.rec.channels):
                    if self.glove["state"] == "error":  # a header with the model's channels came
                        self.set_glove("connected", "connected, columns read from the new header")
                    self.push(row[None, :])
                return
            except StreamHeaderError as e:  # said once; every line until a good header is refused
                if self.glove["state"] != "error":
                    self.set_glove("error", str(e))

    # -- signs out ---------------------------------------------------------------------------------
    def predict_batch(self, episodes: list[np.ndarray]) -> list[Prediction]:
        """The segmenter reads through the model served now (an enrolment may switch it)."""
        return self.model.rec.predict_batch(episodes)

    def _segment(self) -> None:
        while True:  # a break (an unplug) ends one stream: no sign joins samples from both sides of it
            for event in recognise_stream(self, self._tap(), self.settings):
                self._on_sign(event)

    def _tap(self):
        """The samples, in order, to the segmenter; each is also published, and while an enrolment
        records, taken by it instead (a prompted sign is not text). Ends at a break (None)."""
        while True:
            item = self._rows.get()
            if item is None:
                return
            row, arrived = item
            self.samples += 1
            self.publish("sample", {"n": self.samples, "values": [round(float(v), 3) for v in row]})
            enrolment = self.enrolment
            if enrolment is not None and enrolment.capturing:
                if enrolment.take(row, arrived):
                    self.publish("enrol", enrolment.state())
                    if enrolment.phase == "calibrating":
                        threading.Thread(target=self._calibrate, args=(enrolment,), daemon=True).start()
                continue
            self._arrived = arrived
            yield row

    def _on_sign(self, event: dict) -> None:
        classes = self.model.rec.classes
        pred = Prediction(event["jamo"], dict.fromkeys(classes, 0.0) | dict(event["top"]))
        self.latest = {"ts": time.time(), "result": upstream_result(pred, classes, 3) | {"source": "live"}}
        self.spelled.append(event["jamo"])
        self.last_sign = {
            "jamo": event["jamo"],
            "confidence": event["confidence"],
            "top": event["top"],
            "sample": event["sample"],
            "arrived_ms": self._arrived * 1000,  # when the sample that decided it came in
            "model_ms": event["latency_ms"],
            "text": compose(self.spelled),
        }
        self.publish("sign", self.last_sign)

    def edit_text(self, action: str) -> str:
        if action == "space":
            self.spelled.append(" ")
        elif action == "backspace":
            self.spelled = self.spelled[:-1]
        elif action == "clear":
            self.spelled = []
        else:
            raise ValueError(f"'action' is {action!r}: one of space, backspace, clear")
        text = compose(self.spelled)
        self.publish("text", {"text": text})
        return text

    # -- enrolment ---------------------------------------------------------------------------------
    def start_enrolment(self, name: str, shots: int) -> dict:
        if self.enrolment is not None and self.enrolment.phase in ("ready", "recording", "calibrating"):
            raise RuntimeError(f"an enrolment of {self.enrolment.name!r} is under way")
        card = self.base.rec.card
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        folder = self.enrol_settings.outputs / "enrolments" / f"{safe}-{datetime.now():%Y%m%d-%H%M%S}"
        self.enrolment = Enrolment(
            name,
            card.classes,
            card.channels,
            shots,
            self.settings.window,
            self.enrol_settings.lead_in,
            folder,
        )
        state = self.enrolment.state()
        self.publish("enrol", state)
        return state

    def cancel_enrolment(self) -> dict | None:
        if self.enrolment is not None and self.enrolment.capturing:
            self.enrolment.phase = "cancelled"
            self.publish("enrol", self.enrolment.state())
        return self.enrolment.state() if self.enrolment else None

    def _calibrate(self, enrolment: Enrolment) -> None:
        """`calibrate` on the recorded episodes: the personal model is logged as an MLflow run (with the
        episodes) and served from then on; a failure is shown and the model served stays."""
        try:
            run_id, rec = personal_model(self.base, enrolment, self.enrol_settings)
            self.model = ServedModel(self.engine(rec), run_id, run_id)
            enrolment.run_id, enrolment.phase = run_id, "done"
            self.publish("model", self.model.info())
        except Exception as error:  # any failure: one line on the page, never a dead service
            enrolment.phase, enrolment.error = "failed", f"{type(error).__name__}: {error}".splitlines()[0]
            print(f"enrolment of {enrolment.name!r} failed: {enrolment.error}", file=sys.stderr)
        self.publish("enrol", enrolment.state())


def personal_model(
    base: ServedModel, enrolment: Enrolment, settings: EnrolSettings
) -> tuple[str, Recognizer]:
    """The enrolled episodes calibrate `base` (all of them: `shots` per class), logged as a run."""
    from mlflow.tracking import MlflowClient

    from signglove_exp.tracking.store import resolve_uri
    from signglove_exp.training.adapt import tuning
    from signglove_exp.training.cli import compose as compose_config
    from signglove_exp.training.personal import log_personal_model, personalise

    calibration = compose_config().calibration
    method = settings.method or calibration.default_method
    personal = personalise(
        base.rec, base.source, str(enrolment.folder), enrolment.shots, method, 0, tuning(calibration)
    )
    uri = resolve_uri(settings.tracking_uri, settings.outputs)
    run_id = log_personal_model(personal, 0, uri, settings.experiment)
    client = MlflowClient(uri)
    client.log_artifacts(run_id, str(enrolment.folder), "enrolment")
    client.set_tag(run_id, "signglove.enrolment", enrolment.name)
    return run_id, Recognizer.from_torch(personal.net, personal.card)


def _offer(q: asyncio.Queue, message: str) -> None:
    """Put without waiting: a client too slow to read loses its oldest events, not the service."""
    if q.full():
        q.get_nowait()
    q.put_nowait(message)
