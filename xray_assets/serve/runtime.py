"""The fast path: an OpenVINO model run directly, the way ultralytics' predictor runs it.

ultralytics' `predict` on an export does, per image: letterbox to the export's square input (no
"auto" minimal padding: the export's shape is fixed), BGR to RGB, HWC to CHW, divide by 255, infer,
then its NMS and `scale_boxes` back to the original pixels. `letterbox` and `core.detection.raw_boxes`
are those steps, called from here, so a box from this path is the box `predict` gives on the same
export (tested). What this adds is what `predict` cannot do:

- one letterbox for several models that share an input size (the panel's four);
- asynchronous requests: the panel's four models started together, and the annotation queue's
  candidates kept in flight (OpenVINO's `AsyncInferQueue`, as many requests as the device asks
  for) while worker threads decode the next images;
- the precision the CPU does fastest: OpenVINO picks bf16 for a float model on a CPU with AMX or
  AVX-512 BF16 and f32 elsewhere; an INT8 model (`serve.quantize`) runs its integer kernels (VNNI,
  AMX) where the CPU has them.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..core.detection import BOX_COLUMNS, DetectionRule, raw_boxes, read_gray, to_bgr

#: OpenVINO's performance hints: one request as fast as possible, or as many images per second
LATENCY, THROUGHPUT = "LATENCY", "THROUGHPUT"


def letterbox(gray: np.ndarray, imgsz: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(1, 3, imgsz, imgsz) float32 in [0, 1] and the letterboxed (h, w): ultralytics' predictor's
    preprocessing for a fixed-shape export (its LetterBox with auto=False, then RGB, CHW, /255)."""
    from ultralytics.data.augment import LetterBox

    img = LetterBox((imgsz, imgsz), auto=False, stride=32)(image=to_bgr(gray))
    x = np.ascontiguousarray(img[None, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
    x /= 255.0
    return x, (int(img.shape[0]), int(img.shape[1]))


def compile_config(hint: str) -> dict:
    """OpenVINO's CPU settings: the performance hint, and f32 where oneDNN is held below the
    instruction sets that run bf16 (ONEDNN_MAX_CPU_ISA, e.g. AVX2 to measure an AVX2-only CPU on
    a newer one): OpenVINO picks bf16 from the CPU's flags and would find no kernel for it."""
    config = {"PERFORMANCE_HINT": hint}
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap != "ALL" and "AMX" not in cap and "BF16" not in cap:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def model_xml(export: Path) -> Path:
    """The .xml inside an ultralytics OpenVINO export folder."""
    found = sorted(Path(export).glob("*.xml"))
    if not found:
        raise FileNotFoundError(f"{export}: no OpenVINO .xml in the export folder")
    return found[0]


class OpenVinoRunner:
    """One compiled OpenVINO model on the CPU. `hint`: LATENCY (the panel) or THROUGHPUT (scoring
    many images). Thread-safe: each call uses its own infer request."""

    def __init__(self, export: Path, imgsz: int, hint: str = LATENCY):
        from ..compat import decline_openvino_telemetry

        decline_openvino_telemetry()  # before the import: importing openvino sends an event
        import openvino as ov

        self.export, self.imgsz, self.hint = Path(export), int(imgsz), hint
        core = ov.Core()
        model = core.read_model(model_xml(self.export))
        #: NNCF's quantised IR holds FakeQuantize layers, which the CPU plugin runs as integer kernels
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        self.compiled = core.compile_model(model, "CPU", compile_config(hint))
        self.precision = "int8" if self.quantized else self._float_precision()
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def _float_precision(self) -> str:
        """The plugin's float precision: bf16 where the CPU has it, else f32."""
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # an older plugin without the property
            return "float"
        name = getattr(value, "get_type_name", None)  # an openvino.Type: bf16, f32, f16
        return (name() if callable(name) else str(value)).lower()

    @contextmanager
    def lease(self):
        """An idle infer request of this model (a new one when all are busy), returned after use:
        as many requests exist as calls have ever run at once."""
        try:
            req = self._idle.get_nowait()
        except queue.Empty:
            req = self.compiled.create_infer_request()
        try:
            yield req
        finally:
            self._idle.put(req)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (1, 4 + nc, n) of one letterboxed input."""
        with self.lease() as req:
            req.infer({0: x})
            return np.array(req.get_output_tensor(0).data, copy=True)

    def optimal_requests(self) -> int:
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def infer_together(runners: list[OpenVinoRunner], x: np.ndarray) -> list[np.ndarray]:
    """Every runner on the same input at once (asynchronous requests, started together), their raw
    outputs in order."""
    with ExitStack() as stack:
        reqs = [stack.enter_context(r.lease()) for r in runners]
        for req in reqs:
            req.start_async({0: x})
        out = []
        for req in reqs:
            req.wait()
            out.append(np.array(req.get_output_tensor(0).data, copy=True))
        return out


def boxes_of(
    raw: np.ndarray,
    input_hw,
    orig_hw,
    rule: DetectionRule,
    classes,
    image_id: str = "",
) -> pd.DataFrame:
    return pd.DataFrame(
        raw_boxes(raw[0], input_hw, orig_hw, rule, list(classes), image_id), columns=BOX_COLUMNS
    )


def detect_paths(
    runner: OpenVinoRunner,
    images: pd.DataFrame,
    rule: DetectionRule,
    classes,
    progress: Callable[[int, int], None] | None = None,
    decoders: int = 2,
) -> pd.DataFrame:
    """`core.detection.detect_images` on the fast path: every image of `images` (image_id, path),
    decoded and letterboxed by `decoders` threads while OpenVINO keeps its optimal number of
    requests in flight. Same rows, same order of images."""
    import openvino as ov

    classes = list(classes)
    ids, paths = list(images["image_id"]), list(images["path"])
    results: dict[int, list[tuple]] = {}
    failed: list[BaseException] = []
    inflight = ov.AsyncInferQueue(runner.compiled, max(1, runner.optimal_requests()))

    def done(req, info):
        i, input_hw, orig_hw = info
        try:
            raw = np.array(req.get_output_tensor(0).data, copy=True)
            results[i] = raw_boxes(raw[0], input_hw, orig_hw, rule, classes, ids[i])
        except BaseException as exc:  # raised again below: OpenVINO's callback thread would drop it
            failed.append(exc)

    inflight.set_callback(done)

    def prepare(i: int):
        gray = read_gray(paths[i])
        x, input_hw = letterbox(gray, runner.imgsz)
        return i, x, input_hw, gray.shape[:2]

    with cf.ThreadPoolExecutor(max(1, decoders)) as pool:
        pending = [pool.submit(prepare, i) for i in range(min(len(ids), 2 * decoders))]
        nxt = len(pending)
        for n in range(1, len(ids) + 1):
            i, x, input_hw, orig_hw = pending.pop(0).result()
            if nxt < len(ids):
                pending.append(pool.submit(prepare, nxt))
                nxt += 1
            inflight.start_async({0: x}, (i, input_hw, orig_hw))
            if progress and (n % 50 == 0 or n == len(ids)):
                progress(n, len(ids))
        inflight.wait_all()
    if failed:
        raise failed[0]
    if len(results) != len(ids):
        raise RuntimeError(f"the fast path returned {len(results)} of {len(ids)} images")
    rows = [r for i in range(len(ids)) for r in results[i]]
    return pd.DataFrame(rows, columns=BOX_COLUMNS)
