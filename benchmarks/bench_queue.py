"""The annotation queue's scoring: images per minute on this machine's cores, the fast path (the
served runtime: OpenVINO INT8, synchronous requests in as many threads as OpenVINO asks for, as
`annotation_queue` runs it) against the PyTorch predict path it replaced (one image at a time), at
the study's size (`checkpoints.study_size`), on 1024 px PNGs like NIH's. Goals: >= 3x, and a full
40,000-candidate pool for one task in under an hour."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

IMAGES = int(os.environ.get("XRAY_BENCH_QUEUE_IMAGES") or 64)
#: the PyTorch path is slow: timed on fewer images (a rate per image either way)
TORCH_IMAGES = int(os.environ.get("XRAY_BENCH_QUEUE_TORCH_IMAGES") or 12)
POOL = 40_000


def main() -> list[dict]:
    import cpu
    import pandas as pd
    from checkpoints import gflops, study_size, train

    from xray_assets.core.classes import TASKS
    from xray_assets.core.detection import AP_FLOOR, DetectionRule, detect_images, load_model
    from xray_assets.core.synthetic import render
    from xray_assets.serve.models import export_model
    from xray_assets.serve.quantize import export_int8
    from xray_assets.serve.runtime import THROUGHPUT, OpenVinoRunner, detect_paths

    task = TASKS["nih_multi"]
    model, imgsz = study_size()
    floor = DetectionRule(AP_FLOOR, 0.5)
    given = os.environ.get("XRAY_BENCH_QUEUE_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(given or scratch)
        weights, data = train(tmp, task.name, model, imgsz)
        work = gflops(weights, imgsz)
        rows = []
        for i in range(IMAGES):
            img, _ = render(
                np.random.default_rng(100 + i), [["Mass"], ["Cardiomegaly"]][i % 2], 1024, 1024
            )
            p = tmp / "candidates" / f"{i:05d}.png"
            p.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(p), (img * 255).astype(np.uint8))
            rows.append((p.name, str(p)))
        images = pd.DataFrame(rows, columns=["image_id", "path"])

        def rate(fn, frame) -> float:
            fn(frame.head(2))  # warm-up
            t = time.perf_counter()
            fn(frame)
            return (time.perf_counter() - t) / len(frame)

        int8 = OpenVinoRunner(export_int8(weights, imgsz, data), imgsz, THROUGHPUT)
        flt = OpenVinoRunner(export_model(weights, imgsz, "openvino"), imgsz, THROUGHPUT)
        torch_model = load_model(weights)
        per = {
            "int8": rate(lambda f: detect_paths(int8, f, floor, task.classes), images),
            flt.precision: rate(lambda f: detect_paths(flt, f, floor, task.classes), images),
            "pytorch": rate(
                lambda f: detect_images(torch_model, f, floor, imgsz, task.classes),
                images.head(TORCH_IMAGES),
            ),
        }
        emulated = [] if given else cpu.avx2_rows(__file__, {"XRAY_BENCH_QUEUE_DIR": str(tmp)})
    per_minute = {k: 60 / v for k, v in per.items()}
    hours = POOL / per_minute["int8"] / 60
    return [
        {
            "benchmark": "queue scoring per image",
            "unit": "s per image",
            "ours_s": per["int8"],
            "baseline_s": per["pytorch"],
            "speedup": per["pytorch"] / per["int8"],
            "baseline": f"PyTorch predict one image at a time; {per_minute['int8']:.0f} images/min "
            f"(INT8) against {per_minute['pytorch']:.0f} (PyTorch) and "
            f"{per_minute[flt.precision]:.0f} (float OpenVINO, {flt.precision}); {POOL:,} candidates "
            f"in {hours:.2f} h (goal < 1 h); {model} imgsz {imgsz} on 1024 px PNGs, {IMAGES} images; "
            f"CPU {cpu.isa()}, {cpu.cores()} cores; ours {cpu.describe('int8', work, per['int8'])}",
        },
        *emulated,
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import cpu

    cpu.print_rows(main())
