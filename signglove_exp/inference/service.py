"""The HTTP service of `python -m signglove_exp.serve`: upstream KLP-SignGlove's API, a live feed and page.

    POST /predict   {"data": [[flex1..flex5, pitch, roll, yaw], ...], "top_k": 5, "normalize": true}
    GET  /health, /latest, /model (the model card)
    GET  /events    server-sent events: hello, sample, sign, glove, text, enrol, model
    POST /samples   {"data": [[...], ...]}: samples for the live feed (when no glove is attached)
    POST /text      {"action": "space" | "backspace" | "clear"}
    POST /enrol     {"name": "...", "shots": 3}; GET /enrol; POST /enrol/cancel
    GET  /live      the live page

Every refusal is a 4xx whose JSON `detail` is one line saying what was wrong (FastAPI's shape, which
upstream's clients print); the service goes on serving.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from signglove_exp import PACKAGE_DIR
from signglove_exp.inference.live import LiveFeed, upstream_result

PAGE = Path(__file__).with_name("live.html")
FONT = PACKAGE_DIR / "reporting" / "fonts" / "NanumGothic.ttf"  # no system font here has Hangul
KEEP_ALIVE_S = 15  # an idle event stream sends a comment this often, so proxies keep it open


@dataclass
class Limits:
    max_samples: int  # the longest window /predict and /samples take
    max_body: int  # bytes of a request body


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


async def read_json(request: Request, limits: Limits) -> dict:
    """The body as a JSON object; too large, not JSON, or not an object is refused before any work."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body:
        raise Refused(413, f"request body of {int(declared)} bytes; at most {limits.max_body} (--max-body)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body:
                raise Refused(413, f"request body over {limits.max_body} bytes (--max-body)")
    except ClientDisconnect:  # nobody is left to answer; not the service's fault either
        raise Refused(400, "the client went away before its request was whole") from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, f"request body is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise Refused(400, f"request body is a JSON {type(doc).__name__}, expected an object")
    return doc


def window(doc: dict, channels: list[str], limits: Limits) -> np.ndarray:
    """`data` as (n_timepoints, n_channels) floats in the model's channel order, or why not."""
    expected = f"[{', '.join(channels)}]"
    data = doc.get("data")
    if not isinstance(data, list):
        raise Refused(400, f"'data' must be a list of samples, each {expected}")
    if not data:
        raise Refused(400, "'data' is empty: a window needs at least one sample")
    if len(data) > limits.max_samples:
        raise Refused(413, f"'data' has {len(data)} samples; at most {limits.max_samples} (--max-samples)")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(channels):
            size = f"{len(row)} values" if isinstance(row, list) else f"a {type(row).__name__}"
            raise Refused(400, f"data[{i}] is {size}, expected {len(channels)}: {expected}")
        for k, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise Refused(400, f"data[{i}][{k}] ({channels[k]}) is {json.dumps(v)[:40]}, not a number")
            if not math.isfinite(v):
                raise Refused(400, f"data[{i}][{k}] ({channels[k]}) is {v}, not a finite number")
    return np.asarray(data, dtype=np.float64)


@functools.cache
def web_font() -> bytes:
    """The bundled Hangul font as browsers take it: without its hinting-source tables (TSI*), which
    Chromium's font sanitiser rejects ("TSI3: zero-length table"). fontTools comes with matplotlib."""
    from fontTools.ttLib import TTFont

    font = TTFont(FONT)
    for tag in [t for t in font.keys() if t.startswith("TSI")]:  # noqa: SIM118 (a TTFont does not iterate)
        del font[tag]
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


def build_app(feed: LiveFeed, limits: Limits, glove_attached: bool) -> Starlette:
    async def predict(request: Request):
        doc = await read_json(request, limits)
        rec = feed.model.rec
        values = window(doc, rec.channels, limits)
        top_k = doc.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(rec.classes):
            raise Refused(
                400, f"'top_k' is {json.dumps(top_k)[:40]}: a whole number from 1 to {len(rec.classes)}"
            )
        if doc.get("normalize", True) is not True:
            raise Refused(
                400,
                "'normalize' must be true (or left out): send raw sensor values, the model's own scaler "
                "applies (values scaled elsewhere would be scaled twice)",
            )
        started = time.perf_counter()
        pred = rec.predict(values)
        model_ms = (time.perf_counter() - started) * 1000
        result = upstream_result(pred, rec.classes, top_k) | {"model_ms": model_ms}
        feed.latest = {"ts": time.time(), "result": result}
        return JSONResponse(result)

    async def samples(request: Request):
        if glove_attached:
            raise Refused(409, f"the live feed comes from the glove on {feed.glove['port']}")
        values = window(await read_json(request, limits), feed.model.rec.channels, limits)
        if feed.room() < len(values):  # never block the event loop on a full feed
            raise Refused(
                503, f"the live feed is {feed.BACKLOG - feed.room()} samples behind: send them later"
            )
        feed.push(values)
        return JSONResponse({"accepted": len(values)})

    async def events(request: Request):
        q = feed.subscribe(asyncio.get_running_loop())

        async def stream():
            try:
                yield f"event: hello\ndata: {json.dumps(feed.snapshot(), ensure_ascii=False)}\n\n"
                while True:
                    try:
                        yield await asyncio.wait_for(q.get(), KEEP_ALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
            finally:  # the client went away (a closed tab) or the server stops
                feed.unsubscribe(q)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def text(request: Request):
        action = (await read_json(request, limits)).get("action")
        try:
            return JSONResponse({"text": feed.edit_text(str(action))})
        except ValueError as e:
            raise Refused(400, str(e)) from None

    async def enrol(request: Request):
        if request.method == "GET":
            return JSONResponse(feed.enrolment.state() if feed.enrolment else None)
        doc = await read_json(request, limits)
        name, shots = str(doc.get("name") or "").strip(), doc.get("shots", 3)
        if not name:
            raise Refused(400, "'name' is missing: whose enrolment is this")
        if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= 20:
            raise Refused(400, f"'shots' is {json.dumps(shots)[:40]}: signs per jamo, from 1 to 20")
        if feed.base.rec.net is None:
            raise Refused(409, "this model is an ONNX file: enrolment needs its checkpoint or run")
        try:
            return JSONResponse(feed.start_enrolment(name, shots))
        except RuntimeError as e:
            raise Refused(409, str(e)) from None

    async def cancel(request: Request):
        return JSONResponse(feed.cancel_enrolment())

    async def health(request: Request):
        return JSONResponse(
            {"status": "ok", "model": feed.model.info()["name"], "glove": feed.glove["state"]}
        )

    async def latest(request: Request):
        return JSONResponse(feed.latest or {"ts": None, "result": None})

    async def model(request: Request):
        return JSONResponse(feed.model.info() | {"card": feed.model.rec.card.to_dict()})

    async def refused(request: Request, error: Refused):
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    return Starlette(
        routes=[
            Route("/", lambda r: RedirectResponse("/live")),
            Route("/live", lambda r: HTMLResponse(PAGE.read_text(encoding="utf-8"))),
            Route("/font.ttf", lambda r: Response(web_font(), media_type="font/ttf")),
            Route("/predict", predict, methods=["POST"]),
            Route("/samples", samples, methods=["POST"]),
            Route("/events", events),
            Route("/text", text, methods=["POST"]),
            Route("/enrol", enrol, methods=["GET", "POST"]),
            Route("/enrol/cancel", cancel, methods=["POST"]),
            Route("/health", health),
            Route("/latest", latest),
            Route("/model", model),
        ],
        exception_handlers={Refused: refused},
    )
