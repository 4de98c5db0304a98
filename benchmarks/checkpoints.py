"""Real checkpoints for the inference benchmarks: one per served task, the study's model (YOLOv8s)
at the study's input size (800) unless XRAY_BENCH_SERVE_MODEL / XRAY_BENCH_SERVE_IMGSZ say
otherwise, each trained for one epoch on a small dataset of 1024 px renders (latency does not depend
on skill; the INT8 calibration reads the dataset's val images)."""

from __future__ import annotations

import os
from pathlib import Path

#: the toy images' side: the size of a real NIH image, so decoding and letterboxing cost what they do
SIDE = 1024


def study_size() -> tuple[str, int]:
    """(model yaml, imgsz): the study profile's, or the environment's."""
    from xray_assets.config import get_profile

    study = get_profile("study").train
    model = os.environ.get("XRAY_BENCH_SERVE_MODEL") or study.model
    imgsz = int(os.environ.get("XRAY_BENCH_SERVE_IMGSZ") or study.imgsz)
    return model, imgsz


def train(
    tmp: Path,
    task: str,
    model: str,
    imgsz: int,
    n: int = 12,
    epochs: int = 1,
    side: int = SIDE,
    sets: list[list[str]] | None = None,
    fractions: tuple[float, float] = (0.5, 0.75),
    batch: int = 2,
) -> tuple[Path, Path]:
    """(weights, data.yaml) of `model` trained for `epochs` on `n` renders of `side` px for `task`
    (`sets`: the findings drawn, image by image in turn; `fractions`: where train and val end)."""
    from xray_assets.config import configure_ultralytics
    from xray_assets.core.synthetic import toy_yolo_dataset

    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    weights = tmp / "runs" / task / "weights" / "last.pt"
    if weights.exists():  # trained by an earlier measurement in this run
        return weights, tmp / task / "ds" / "data.yaml"
    sets = sets or [["Cardiomegaly"], ["Mass"]]
    data = toy_yolo_dataset(tmp / task, task, n, side, sets, fractions)
    YOLO(model).train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        workers=0,
        plots=False,
        val=False,
        device="cpu",
        project=str(tmp / "runs"),
        name=task,
        exist_ok=True,
        verbose=False,
    )
    return weights, data


def gflops(weights: Path, imgsz: int) -> float:
    """GFLOPs of one forward pass at `imgsz` (ultralytics' own count)."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    return float(get_flops(YOLO(str(weights)).model, imgsz))
