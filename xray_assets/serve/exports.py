"""The weights exported for a fast backend, once per (weights, input size, precision), beside them:
built in a temporary folder by ultralytics' own `export`, then moved into place whole and reused.
INT8 (OpenVINO only) is NNCF's post-training quantisation through the same call, calibrated on the
val split of a dataset's data.yaml."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from ..config import configure_ultralytics
from ..core import atomic

#: what `ultralytics` exports for each fast backend, and the suffix of the cached export
EXPORTS = {"openvino": "_openvino_model", "onnx": ".onnx"}


def export_path(weights: Path, imgsz: int, backend: str, int8: bool = False) -> Path:
    """Where the export of `weights` for `backend` (INT8 or float) is cached."""
    return weights.with_name(f"{weights.stem}-{imgsz}{'_int8' if int8 else ''}{EXPORTS[backend]}")


def export_model(weights: Path, imgsz: int, backend: str, calibration: Path | None = None) -> Path:
    """The weights exported for `backend`, once; INT8 when `calibration` (a data.yaml, its val
    split) is given."""
    final = export_path(weights, imgsz, backend, int8=calibration is not None)
    if final.exists():
        return final
    configure_ultralytics()  # offline, and OpenVINO's telemetry declined before it is imported
    from ultralytics import YOLO

    kwargs: dict = {"simplify": False} if backend == "onnx" else {}
    if calibration is not None:
        import nncf

        nncf.set_log_level(logging.WARNING)  # a line per layer otherwise
        kwargs.update(int8=True, data=str(calibration), split="val", batch=1)
    with tempfile.TemporaryDirectory(dir=weights.parent, prefix=".export-") as tmp:
        src = Path(tmp) / weights.name
        shutil.copyfile(weights, src)
        out = YOLO(str(src)).export(
            format=backend, imgsz=imgsz, dynamic=False, verbose=False, **kwargs
        )
        atomic.place(out, final)
    return final
