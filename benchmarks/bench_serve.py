"""One panel request (four models, a 1024 px image) at the study's size: YOLOv8s at imgsz 800
(`checkpoints.study_size`). The served app's paths, models loaded once (INT8 OpenVINO, and the float
OpenVINO export in the precision the CPU picks for it), against the study's demo (four PyTorch models
loaded from disk on every request), in the same run. Goals: >= 8x p50 on a CPU with VNNI or AMX,
>= 4x on an AVX2-only one. Every row names the CPU's instruction sets and the achieved GFLOP/s
against that precision's nominal peak (`cpu.py`). PyTorch and ONNX Runtime loaded once are shown to
say where the time goes.

The AP50 change of INT8 needs a model that has learned something: a YOLOv8n trained 30 epochs on 128 px
renders (the tests' toy model), its test split scored by the evaluation's code, float weights
against INT8 (the served tasks' own changes are in each `served_int8` materialisation)."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

REQUESTS = int(os.environ.get("XRAY_BENCH_SERVE_REQUESTS") or 20)


def _percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def timed(fn, n: int = REQUESTS) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ap50_change(tmp: Path) -> dict:
    """Float against INT8 test AP50 of a toy model that finds things (the tests' recipe)."""
    import pandas as pd
    from checkpoints import train

    from xray_assets.core.classes import TASKS
    from xray_assets.core.detection import AP_FLOOR, DetectionRule, detect_images, load_model
    from xray_assets.serve.quantize import export_int8, test_map50
    from xray_assets.serve.runtime import THROUGHPUT, OpenVinoRunner, detect_paths

    size, task = 128, TASKS["nih_multi"]
    sets = [["Cardiomegaly"], ["Mass"], ["Effusion"], ["Cardiomegaly", "Effusion"], []]
    weights, data = train(
        tmp / "toy", task.name, "yolov8n.yaml", size, 60, 30, size, sets, (0.6, 0.75), batch=8
    )
    paths = [Path(p) for p in (data.parent / "test.txt").read_text().split()]
    test = pd.DataFrame({"image_id": [p.name for p in paths], "path": [str(p) for p in paths]})
    gt_rows = []
    for p in paths:  # the YOLO labels (class, centre, size; normalised) in pixels
        for line in (data.parent / "labels" / "test" / f"{p.stem}.txt").read_text().splitlines():
            c, cx, cy, w, h = (float(v) for v in line.split())
            x0, y0 = (cx - w / 2) * size, (cy - h / 2) * size
            gt_rows.append((p.name, task.classes[int(c)], x0, y0, x0 + w * size, y0 + h * size))
    gt = pd.DataFrame(gt_rows, columns=["image_id", "label", "x_min", "y_min", "x_max", "y_max"])
    rule = DetectionRule(0.25, 0.5)
    floor = rule.at(conf=AP_FLOOR)
    runner = OpenVinoRunner(export_int8(weights, size, data), size, THROUGHPUT)
    f = test_map50(
        gt, detect_images(load_model(weights), test, floor, size, task.classes), task.classes, rule
    )
    q = test_map50(gt, detect_paths(runner, test, floor, task.classes), task.classes, rule)
    return {"float": f, "int8": q, "images": len(test), "boxes": len(gt)}


def main() -> list[dict]:
    import cpu
    from checkpoints import gflops, study_size, train

    from xray_assets.config import configure_ultralytics
    from xray_assets.core.classes import SERVED_TASKS, TASKS
    from xray_assets.core.detection import DetectionRule
    from xray_assets.core.synthetic import render
    from xray_assets.serve.app import run_panel
    from xray_assets.serve.models import ServedModel
    from xray_assets.serve.quantize import export_int8
    from xray_assets.serve.runtime import OpenVinoRunner

    configure_ultralytics()
    from ultralytics import YOLO

    model, imgsz = study_size()
    img, _ = render(np.random.default_rng(5), ["Cardiomegaly", "Mass"], 1024, 1024)
    gray = (img * 255).astype(np.uint8)
    rows = []
    given = os.environ.get("XRAY_BENCH_SERVE_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(given or scratch)
        trained = {t: train(tmp, t, model, imgsz) for t in SERVED_TASKS}
        weights = {t: w for t, (w, _) in trained.items()}
        work = sum(gflops(w, imgsz) for w in weights.values())  # one request: the four models

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
                ).load()
                for t in SERVED_TASKS
            ]

        def int8_panel(float_panel):
            out = []
            for m in float_panel:
                runner = OpenVinoRunner(export_int8(m.weights, imgsz, trained[m.task][1]), imgsz)
                out.append(replace(m, runner=runner, precision=runner.precision))
            return out

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

        float_panel = served("openvino")
        q_panel = int8_panel(float_panel)
        assert all(m.precision == "int8" for m in q_panel)
        fprec = float_panel[0].precision
        torch_panel = served("pytorch")
        times = {
            "int8": timed(lambda: run_panel(q_panel, gray)),
            fprec: timed(lambda: run_panel(float_panel, gray)),
            "pytorch": timed(lambda: run_panel(torch_panel, gray), 5),
            "study": timed(study_request, 5),
        }
        ap = ap50_change(tmp) if not given else None
        # the same on the same checkpoints with the kernels held at AVX2 (unless this is that run)
        emulated = [] if given else cpu.avx2_rows(__file__, {"XRAY_BENCH_SERVE_DIR": str(tmp)})
    study = times["study"]
    torch_p50 = _percentiles(times["pytorch"])[0]
    where = (
        f"CPU {cpu.isa()}, {cpu.cores()} cores; {model} imgsz {imgsz}, {work:.0f} GFLOPs per "
        f"request; study: 4 PyTorch loads per request ({cpu.describe('f32', work, _percentiles(study)[0])} "
        f"at p50); PyTorch loaded once {torch_p50 * 1000:.0f} ms"
    )
    for prec in ("int8", fprec):
        for name, q in (("p50", 0), ("p95", 1)):
            ours, base = _percentiles(times[prec])[q], _percentiles(study)[q]
            rows.append(
                {
                    "benchmark": f"panel {prec} {name}",
                    "ours_s": ours,
                    "baseline_s": base,
                    "speedup": base / ours,
                    "baseline": f"{where}; ours {cpu.describe(prec, work, ours)}",
                }
            )
    if ap is None:  # the child run: timings only
        return rows
    rows.append(
        {
            "benchmark": "INT8 test AP50 (toy)",
            "ours_s": ap["int8"],
            "baseline_s": ap["float"],
            "speedup": ap["int8"] / ap["float"] if ap["float"] else float("nan"),
            "baseline": f"float weights' AP50; change {ap['int8'] - ap['float']:+.3f} on "
            f"{ap['images']} test images ({ap['boxes']} boxes), YOLOv8n 30 epochs at 128 px",
            "unit": "AP50, not seconds",
        }
    )
    return rows + emulated


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import cpu

    cpu.print_rows(main())
