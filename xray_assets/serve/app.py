"""`xray-assets serve`: FastAPI on uvicorn, the four served models loaded once at start-up.

- `GET /`: the upload page; `POST /detect`: the same page with four labelled panels (or the error);
- `POST /api/detect` (multipart field `file`): JSON, boxes in the original image's pixels;
- `GET /health`: the models served (task, version, how chosen, thresholds, runtime).
Uploads over the size limit get 413, and so do images whose header declares more pixels than the
budget (XRAY_MAX_MEGAPIXELS, checked before decoding); unsupported types 415, corrupt images or
DICOMs 400. An upload is parsed into memory (or Starlette's private spooled temp file past 1 MB) and
decoded in an isolated worker process (`core.isolation`: XRAY_DECODE_WORKERS at once, each with a
timeout and a memory cap), so a decoder that crashes or runs away fails that request only. A DICOM
is decoded from its own `mkstemp` file, deleted at once, so no two uploads share a file name.
Nothing from a DICOM header is returned or logged, nor is the uploaded file's name.
"""

import asyncio
import base64
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..config import current
from ..core.isolation import DecodeLimits, IsolatedPool, failure_reason
from .decode import UploadError, check_upload, decode
from .models import ServedModel

log = logging.getLogger("xray_assets.serve")
PALETTE = [
    (66, 135, 245),
    (245, 130, 48),
    (60, 180, 75),
    (230, 25, 75),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


NOT_FOR_DIAGNOSIS = "research use only, not for diagnosis"


def provenance(m: ServedModel) -> str:
    """Where a model comes from, in words: its profile, its starting weights, what it learned from."""
    data = {
        True: "learned from the synthetic sample data (never saw a real radiograph)",
        False: "learned from the configured data",
        None: "training data unknown",
    }[m.trained_on_synthetic]
    return f"profile {m.profile or '?'}, init {m.init}, {data}"


def panel_boxes(panel: list[ServedModel], gray: np.ndarray) -> list[list[dict]]:
    """Each model's boxes. Models on the fast path that share an input size get one letterbox and
    run at once (one synchronous request each, in threads); any other model runs its own `detect`."""
    from .runtime import infer_together, letterbox

    fast = [m for m in panel if m.runner is not None]
    out: dict[int, list[dict]] = {}
    for imgsz in sorted({m.imgsz for m in fast}):
        group = [m for m in fast if m.imgsz == imgsz]
        x, input_hw = letterbox(gray, imgsz)
        for m, raw in zip(group, infer_together([m.runner for m in group], x)):
            out[id(m)] = m.boxes(raw, input_hw, gray.shape[:2])
    return [out[id(m)] if id(m) in out else m.detect(gray) for m in panel]


def run_panel(panel: list[ServedModel], gray: np.ndarray) -> dict:
    h, w = gray.shape[:2]
    return {
        "image": {"width": int(w), "height": int(h)},
        "notice": NOT_FOR_DIAGNOSIS,
        "models": [
            {
                "task": m.task,
                "version": m.version,
                "chosen": m.chosen,
                "precision": m.precision,
                "conf": m.conf,
                "iou": m.iou,
                "agnostic_nms": m.rule.agnostic,
                "max_det": m.rule.max_det,
                "profile": m.profile,
                "init": m.init,
                "trained_on_synthetic": m.trained_on_synthetic,
                "boxes": boxes,
            }
            for m, boxes in zip(panel, panel_boxes(panel, gray))
        ],
    }


def draw(gray: np.ndarray, result: dict, classes: list[str], max_side: int = 640) -> bytes:
    """One panel: the image with its boxes, class names and scores (OpenCV's built-in font)."""
    scale = min(1.0, max_side / max(gray.shape[:2]))
    img = (
        cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray
    )
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for b in result["boxes"]:
        color = (
            PALETTE[classes.index(b["label"]) % len(PALETTE)]
            if b["label"] in classes
            else PALETTE[0]
        )
        p0 = (int(b["x_min"] * scale), int(b["y_min"] * scale))
        p1 = (int(b["x_max"] * scale), int(b["y_max"] * scale))
        cv2.rectangle(img, p0, p1, color, 2)
        text = f"{b['label']} {b['score']:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        y = max(p0[1], th + 4)
        cv2.rectangle(img, (p0[0], y - th - 4), (p0[0] + tw + 4, y), color, -1)
        cv2.putText(
            img,
            text,
            (p0[0] + 2, y - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return cv2.imencode(".png", img)[1].tobytes()


def _templates():
    """The page's Jinja2 templates (`templates/`), every value HTML-escaped."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html"]),
    )


TEMPLATES = _templates()


def _model_view(m: ServedModel) -> dict:
    return {
        "task": m.task,
        "version": m.version,
        "chosen": m.chosen,
        "backend": f"{m.backend} {m.precision}".strip(),
        "conf": f"{m.conf:g}",
        "iou": f"{m.iou:g}",
        "provenance": provenance(m),
    }


def _page(
    panel: list[ServedModel], limit_mb: float, result: dict | None = None, error: dict | None = None
) -> str:
    """The page: the upload form, the served models and, after an upload, its panels or its error."""
    return TEMPLATES.get_template("index.html").render(
        models=[_model_view(m) for m in panel],
        limit_mb=f"{limit_mb:g}",
        result=result,
        error=error,
        synthetic=sum(1 for m in panel if m.trained_on_synthetic),
    )


def _panels(gray: np.ndarray, result: dict, panel: list[ServedModel]) -> dict:
    """What the panels template shows: per model its drawn image (PNG, base64) and boxes."""
    panels = [
        {
            **_model_view(m),
            "png": base64.b64encode(draw(gray, r, m.classes)).decode(),
            "boxes": r["boxes"],
        }
        for m, r in zip(panel, result["models"])
    ]
    return {
        "width": result["image"]["width"],
        "height": result["image"]["height"],
        "panels": panels,
    }


@dataclass
class Uploads:
    """What the upload handlers share: the panel, the size limit, the decode limits and the decode
    workers (started on the first upload: a model-less app starts none)."""

    panel: list[ServedModel]
    limit_mb: float
    limits: DecodeLimits
    pools: list[IsolatedPool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def limit(self) -> int:
        return int(self.limit_mb * 1024 * 1024)

    def too_large(self) -> UploadError:
        return UploadError(413, f"upload too large: the limit is {self.limit_mb:g} MB")

    def pool(self) -> IsolatedPool:
        with self.lock:
            if not self.pools:
                self.pools.append(IsolatedPool(self.limits))
            return self.pools[0]

    def close(self) -> None:
        for p in self.pools:
            p.close()


async def read_file(request: Request, uploads: Uploads) -> tuple[bytes, str]:
    """The upload's bytes and file name: its declared and its read size checked against the limit
    (413), a missing, empty or malformed multipart body refused (400)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > uploads.limit + 64 * 1024:
        raise uploads.too_large()
    try:
        form = await request.form(max_part_size=uploads.limit + 1)
        up = form.get("file")
        if up is None or not hasattr(up, "read"):
            raise UploadError(400, "no file: send the image in the multipart field 'file'")
        data = await up.read(uploads.limit + 1)
    except UploadError:
        raise
    except Exception as exc:  # a malformed multipart body
        if "size" in str(exc).lower() and "exceed" in str(exc).lower():
            raise uploads.too_large() from None
        raise UploadError(400, "the request is not a readable multipart upload") from None
    if len(data) > uploads.limit:
        raise uploads.too_large()
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    return data, up.filename or ""


async def read_upload(request: Request, uploads: Uploads) -> tuple[np.ndarray, str, int]:
    """(grey pixels, kind, bytes) of the upload: type and declared size checked here, before any
    decoding (a bomb never reaches a worker), then decoded in an isolated worker."""
    data, filename = await read_file(request, uploads)
    limits = uploads.limits
    kind = check_upload(data, filename, limits.max_megapixels)
    future = uploads.pool().submit(decode, data, filename, limits.max_megapixels)
    try:
        gray, kind = await asyncio.wrap_future(future)
    except UploadError:
        raise
    except Exception as exc:  # the worker crashed, hung or hit its memory cap: this request fails
        status = 413 if isinstance(exc, MemoryError) else 400
        raise UploadError(
            status, f"this {kind.upper()} cannot be decoded: {failure_reason(exc, limits)}"
        ) from None
    return gray, kind, len(data)


async def handle(request: Request, uploads: Uploads) -> tuple[np.ndarray, dict]:
    """The upload decoded and run through the panel; one log line per request (no file name)."""
    rid = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    try:
        gray, kind, size = await read_upload(request, uploads)
    except UploadError as exc:
        log.info(f"request {rid}: rejected {exc.status} ({exc})")
        raise
    result = await run_in_threadpool(run_panel, uploads.panel, gray)
    n = sum(len(m["boxes"]) for m in result["models"])
    log.info(
        f"request {rid}: {kind} {size} bytes {gray.shape[1]}x{gray.shape[0]} -> {n} boxes in "
        f"{(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    return gray, result


def health_of(uploads: Uploads) -> dict:
    limits = uploads.limits
    return {
        "status": "ok",
        "models": [m.describe() for m in uploads.panel],
        "decode": {
            "max_megapixels": limits.max_megapixels,
            "workers": limits.workers,
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
        },
    }


async def api_detect(request: Request):
    """POST /api/detect: JSON, boxes in the original image's pixels (or the error and its status)."""
    try:
        _, result = await handle(request, request.app.state.uploads)
    except UploadError as exc:
        return JSONResponse({"error": str(exc), "status": exc.status}, status_code=exc.status)
    return result


async def page_detect(request: Request):
    """POST /detect: the page with the four labelled panels (or the error)."""
    uploads = request.app.state.uploads
    try:
        gray, result = await handle(request, uploads)
    except UploadError as exc:
        error = {"status": exc.status, "message": str(exc)}
        return HTMLResponse(
            _page(uploads.panel, uploads.limit_mb, error=error), status_code=exc.status
        )
    shown = await run_in_threadpool(_panels, gray, result, uploads.panel)
    return HTMLResponse(_page(uploads.panel, uploads.limit_mb, result=shown))


def create_app(
    panel: list[ServedModel],
    limit_mb: float | None = None,
    limits: DecodeLimits | None = None,
):
    uploads = Uploads(
        panel,
        current().max_upload_mb if limit_mb is None else limit_mb,
        limits or current().decode,
    )

    @asynccontextmanager
    async def lifespan(app):
        yield
        uploads.close()

    app = FastAPI(title="xray-assets panel", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.panel, app.state.decode_limits, app.state.uploads = panel, uploads.limits, uploads
    app.add_api_route(
        "/", lambda: _page(panel, uploads.limit_mb), methods=["GET"], response_class=HTMLResponse
    )
    app.add_api_route("/health", lambda: health_of(uploads), methods=["GET"])
    app.add_api_route("/api/detect", api_detect, methods=["POST"])
    app.add_api_route("/detect", page_detect, methods=["POST"], response_class=HTMLResponse)
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, backend: str = "openvino") -> None:
    import uvicorn

    from .models import load_panel

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    panel = load_panel(backend=backend)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(f"binding {host}: the panel is reachable from other machines")
    # access logs off: they would carry nothing sensitive, but the app's own line says more
    uvicorn.run(create_app(panel), host=host, port=port, access_log=False, log_level="info")
