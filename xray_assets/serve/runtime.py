"""The fast path: an OpenVINO model run directly, the way ultralytics' predictor runs it.

ultralytics' `predict` on an export does, per image: letterbox to the export's square input (no
"auto" minimal padding: the export's shape is fixed), BGR to RGB, HWC to CHW, divide by 255, infer,
then its NMS and `scale_boxes` back to the original pixels. `letterbox` and `core.detection.raw_boxes`
are those steps, called from here, so a box from this path is the box `predict` gives on the same
export (tested). What this adds is what `predict` cannot do:

- one letterbox for several models that share an input size (the panel's four);
- requests in flight at once: the panel's four models on one image, and the annotation queue's
  candidates decoded and inferred by as many threads as OpenVINO asks requests for;
- the precision the CPU does fastest: OpenVINO picks bf16 for a float model on a CPU with AMX or
  AVX-512 BF16 and f32 elsewhere; an INT8 model (`serve.quantize`) runs its integer kernels (VNNI,
  AMX) where the CPU has them.

Every request is synchronous, run from a Python thread (OpenVINO releases the GIL while it infers),
and every compiled model lives as long as the process (`compiled_model`). OpenVINO's
`AsyncInferQueue` with a Python callback deadlocked at teardown on AMD Zen 4 with OpenVINO 2026.4.1
(the main thread in `~CompiledModel` joining an executor thread that waited for the GIL; measured
here: hangs after 1, 16 and 22 runs of `detect_paths` with the runner dropped after each), and synchronous
requests in threads scored as fast (`benchmarks/bench_queue.py`). No Python code runs on
OpenVINO's own threads, so none of them can wait for the GIL.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import platform
import queue
import re
import threading
from contextlib import contextmanager
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


def compile_config(hint: str, f32: bool = False) -> dict:
    """OpenVINO's CPU settings: the performance hint, and f32 where asked (`f32`) or where oneDNN
    is held below the instruction sets that run bf16 (ONEDNN_MAX_CPU_ISA, e.g. AVX2 to measure an
    AVX2-only CPU on a newer one): OpenVINO picks bf16 from the CPU's flags and would find no
    kernel for it."""
    config = {"PERFORMANCE_HINT": hint}
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if f32 or (cap and cap != "ALL" and "AMX" not in cap and "BF16" not in cap):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


#: the CPU flags that decide which inference kernels run (and so which figures a fast path gives)
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's own flags (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(m.group(1).split()) if m else frozenset()


def cpu_signature() -> str:
    """The instruction sets the inference kernels may use here, as one line: the CPU's flags that
    matter (/proc/cpuinfo) and the caps the environment puts on oneDNN and PyTorch. A fast path's
    accuracy check holds for the CPU it ran on: another signature checks again."""
    flags = cpu_flags()
    caps = [
        f"{k}={os.environ[k]}"
        for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
        if os.environ.get(k)
    ]
    return " ".join([platform.machine(), *(f for f in KERNEL_FLAGS if f in flags), *caps])


def model_xml(export: Path) -> Path:
    """The .xml inside an ultralytics OpenVINO export folder."""
    found = sorted(Path(export).glob("*.xml"))
    if not found:
        raise FileNotFoundError(f"{export}: no OpenVINO .xml in the export folder")
    return found[0]


#: compiled models, one per (export, settings) for the life of the process (see the module docstring)
_COMPILED: dict[tuple, object] = {}
_COMPILED_LOCK = threading.Lock()


def compiled_model(xml: Path, config: dict):
    """The compiled model of `xml` under `config`, compiled once per process and never released
    before the process ends: OpenVINO's CPU plugin joins its executor threads when a compiled model
    is destroyed, and a release at a garbage collector's whim while those threads still hold work
    for Python is how its teardown deadlocks (ultralytics issue 25923)."""
    from ..core.compat import decline_openvino_telemetry

    decline_openvino_telemetry()  # before the import: importing openvino sends an event
    import openvino as ov

    stat = xml.stat()
    key = (str(xml.resolve()), stat.st_mtime_ns, stat.st_size, tuple(sorted(config.items())))
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            core = ov.Core()
            model = core.read_model(xml)
            _COMPILED[key] = (core.compile_model(model, "CPU", config), model)
        return _COMPILED[key]


class OpenVinoRunner:
    """One compiled OpenVINO model on the CPU. `hint`: LATENCY (the panel) or THROUGHPUT (scoring
    many images); `f32`: held at f32 where the plugin would pick bf16. Thread-safe: each call uses its own infer request, run synchronously (OpenVINO
    releases the GIL while it infers)."""

    def __init__(self, export: Path, imgsz: int, hint: str = LATENCY, f32: bool = False):
        self.export, self.imgsz, self.hint = Path(export), int(imgsz), hint
        self.compiled, model = compiled_model(model_xml(self.export), compile_config(hint, f32))
        #: NNCF's quantised IR holds FakeQuantize layers, which the CPU plugin runs as integer kernels
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
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
        """Raw outputs (1, 4 + nc, n) of one letterboxed input (a synchronous request)."""
        with self.lease() as req:
            req.infer({0: x})
            return np.array(req.get_output_tensor(0).data, copy=True)

    def optimal_requests(self) -> int:
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


#: the threads that run several models' requests at once (the panel), shared by the process
_PANEL_POOL = cf.ThreadPoolExecutor(4, thread_name_prefix="xray-openvino")


def infer_together(runners: list[OpenVinoRunner], x: np.ndarray) -> list[np.ndarray]:
    """Every runner on the same input at once (one synchronous request each, in threads), their raw
    outputs in order."""
    if len(runners) == 1:
        return [runners[0].infer(x)]
    return list(_PANEL_POOL.map(lambda r: r.infer(x), runners))


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
    workers: int | None = None,
) -> pd.DataFrame:
    """`core.detection.detect_images` on the fast path: every image of `images` (image_id, path)
    decoded, letterboxed, inferred (a synchronous request) and suppressed by one of `workers`
    threads (default: as many as OpenVINO's optimal number of requests, at least 2, so decoding
    overlaps inference). Same rows, same order of images."""
    classes = list(classes)
    ids, paths = list(images["image_id"]), list(images["path"])
    workers = workers or max(2, runner.optimal_requests())

    def one(i: int) -> list[tuple]:
        gray = read_gray(paths[i])
        x, input_hw = letterbox(gray, runner.imgsz)
        return raw_boxes(runner.infer(x)[0], input_hw, gray.shape[:2], rule, classes, ids[i])

    results: list[list[tuple]] = []
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="xray-detect") as pool:
        # in order, at most a few images ahead of the one awaited (memory stays flat on a long list)
        window = 2 * max(1, workers)
        pending = [pool.submit(one, i) for i in range(min(len(ids), window))]
        for n in range(1, len(ids) + 1):
            results.append(pending.pop(0).result())
            if n - 1 + window < len(ids):
                pending.append(pool.submit(one, n - 1 + window))
            if progress and (n % 50 == 0 or n == len(ids)):
                progress(n, len(ids))
    rows = [r for found in results for r in found]
    return pd.DataFrame(rows, columns=BOX_COLUMNS)
