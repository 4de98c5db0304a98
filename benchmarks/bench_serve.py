"""One panel request (four models, a 1024 px image, the demo profile's imgsz): the served app's path
(models loaded once, OpenVINO) against the study's demo (four PyTorch models loaded from disk on
every request), in the same run. Goal: >= 4x. Also PyTorch and ONNX Runtime models loaded once, to
show where the time goes. XRAY_BENCH_SERVE_IMGSZ=800 measures at the study profile's input size."""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REQUESTS = 30


def _percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def main() -> list[dict]:
    from xray_assets.config import configure_ultralytics, get_profile
    from xray_assets.core.classes import SERVED_TASKS, TASKS
    from xray_assets.core.detection import DetectionRule
    from xray_assets.core.synthetic import render, toy_yolo_dataset
    from xray_assets.serve.app import run_panel
    from xray_assets.serve.models import ServedModel

    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    import os

    imgsz = int(os.environ.get("XRAY_BENCH_SERVE_IMGSZ") or get_profile("demo").train.imgsz)
    img, _ = render(np.random.default_rng(5), ["Cardiomegaly", "Mass"], 1024, 1024)
    gray = (img * 255).astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = {}
        for (
            task
        ) in SERVED_TASKS:  # a real checkpoint per task (1 epoch: latency does not depend on skill)
            data = toy_yolo_dataset(
                tmp / task, task, 8, 256, [["Cardiomegaly"], ["Mass"]], (0.75, 1.0)
            )
            YOLO("yolov8n.yaml").train(
                data=str(data),
                epochs=1,
                imgsz=imgsz,
                batch=4,
                workers=0,
                plots=False,
                val=False,
                device="cpu",
                project=str(tmp / "runs"),
                name=task,
                verbose=False,
            )
            weights[task] = tmp / "runs" / task / "weights" / "last.pt"

        def served(backend):
            return [
                ServedModel(
                    task=t,
                    version="1",
                    chosen="bench",
                    imgsz=imgsz,
                    rule=DetectionRule(0.03, 0.5, agnostic=TASKS[t].agnostic_nms),
                    classes=list(TASKS[t].classes),
                    weights=weights[t],
                    backend=backend,
                    lock=threading.Lock(),
                ).load()
                for t in SERVED_TASKS
            ]

        def study_request():
            # the study's demo: the upload written to one fixed path, four models loaded from disk
            path = tmp / "upload.png"
            cv2.imwrite(str(path), gray)
            for t in SERVED_TASKS:
                YOLO(str(weights[t])).predict(
                    str(path),
                    imgsz=imgsz,
                    conf=0.03,
                    iou=0.5,
                    agnostic_nms=TASKS[t].agnostic_nms,
                    verbose=False,
                )

        def timed(fn) -> list[float]:
            fn()  # warm-up
            out = []
            for _ in range(REQUESTS):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
            return out

        ov_panel, onnx_panel, torch_panel = served("openvino"), served("onnx"), served("pytorch")
        ours = timed(lambda: run_panel(ov_panel, gray))
        loaded_onnx = timed(lambda: run_panel(onnx_panel, gray))
        loaded_torch = timed(lambda: run_panel(torch_panel, gray))
        study = timed(study_request)
    for name, q in (("p50", 0), ("p95", 1)):
        o, s, lt = _percentiles(ours)[q], _percentiles(study)[q], _percentiles(loaded_torch)[q]
        lo = _percentiles(loaded_onnx)[q]
        rows.append(
            {
                "benchmark": f"panel request {name}",
                "ours_s": o,
                "baseline_s": s,
                "speedup": s / o,
                "baseline": f"study: 4 PyTorch loads per request, imgsz {imgsz}, 1024 px "
                f"(loaded once: PyTorch {lt * 1000:.0f} ms, ONNX Runtime {lo * 1000:.0f} ms)",
            }
        )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(r)
