"""INT8 for the fast path: NNCF's post-training quantisation of a model's OpenVINO export, used only
where it keeps the model's accuracy.

- **Calibration** on the task's own val images (its dataset's `data.yaml`, split `val`; never test),
  through ultralytics' OpenVINO export with `int8=True` (NNCF, the MIXED preset, the detection head
  kept in float as ultralytics does).
- **The check**: threshold-free test AP50 of the INT8 model against the float weights', both computed
  by the evaluation's code (`metrics.evaluate` over every test image at the AP floor through the
  task's detection rule): the float weights through `detection.detect_images` (the evaluation's own
  pass), the INT8 model through the fast path that would serve it. INT8 serves only if it loses at
  most `max_drop` (XRAY_INT8_MAX_DROP, default 0.01: one point).
- **Cached** beside the weights (per registered version under `serve/<task>/v<version>/`): the export
  folder `<stem>-<imgsz>_int8_openvino_model` and `<stem>-<imgsz>_int8_check.json`, keyed by the
  weights' sha256 and the tolerance, so a re-run and the web app's start reuse both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .. import layout
from ..core.detection import AP_FLOOR, DetectionRule, detect_images, load_model
from ..core.dicom import file_sha256
from ..core.evaluation import split
from ..core.metrics import evaluate, summarise
from .exports import export_model, export_path

log = logging.getLogger("xray_assets.serve")

#: the check's verdicts
PASSED, FAILED, OFF = "passed", "failed", "off"


@dataclass
class Int8Check:
    """Whether the INT8 model serves, and the figures that decided it."""

    verdict: str  # passed, failed (the float export serves) or off (not tried)
    reason: str
    weights_sha256: str = ""
    max_drop: float = 0.01
    float_test_map50: float | None = None
    int8_test_map50: float | None = None
    test_images: int = 0
    calibration_images: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def change(self) -> float | None:
        """INT8 AP50 minus float AP50 (negative: INT8 lost accuracy)."""
        if self.float_test_map50 is None or self.int8_test_map50 is None:
            return None
        return self.int8_test_map50 - self.float_test_map50

    def tags(self) -> dict[str, str]:
        """The check as registry tags on the model version."""
        out = {"int8_check": self.verdict, "int8_reason": self.reason[:250]}
        for key in ("float_test_map50", "int8_test_map50"):
            value = getattr(self, key)
            if value is not None:
                out[key] = f"{value:.4f}"
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "ap50_change": self.change}


def export_int8(weights: Path, imgsz: int, data_yaml: Path) -> Path:
    """NNCF INT8 OpenVINO export of `weights`, calibrated on `data_yaml`'s val split, beside the
    weights, once."""
    return export_model(weights, imgsz, "openvino", calibration=data_yaml)


def _val_count(data_yaml: Path) -> int:
    import yaml

    val = yaml.safe_load(Path(data_yaml).read_text()).get("val")
    p = Path(val) if val else None
    if p is None or not p.exists():
        return 0
    return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.is_file() else 0


def test_split(storage, task: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(images with local paths, ground truth) of the task's test split, or None without a dataset."""
    if not storage.exists(*layout.dataset_images(task)):
        return None
    images, gt = split(
        storage.read_parquet(*layout.dataset_images(task)),
        storage.read_parquet(*layout.dataset_boxes(task)),
        "test",
    )
    storage.localise(images["path"])
    return images, gt


def test_map50(gt: pd.DataFrame, dets: pd.DataFrame, classes, rule: DetectionRule) -> float:
    """Threshold-free AP50 as the evaluation computes it (its table, its summary)."""
    return float(summarise(evaluate(gt, dets, list(classes), conf=rule.conf))["map50"])


def check_int8(
    weights: Path,
    imgsz: int,
    rule: DetectionRule,
    classes,
    storage,
    task: str,
    max_drop: float = 0.01,
    log_line=log.info,
) -> tuple[Path | None, Int8Check]:
    """(INT8 export or None, the check): the cached verdict when the weights and tolerance are the
    same, else calibrate, quantise and check now."""
    from .runtime import THROUGHPUT, OpenVinoRunner, detect_paths

    weights = Path(weights)
    export = export_path(weights, imgsz, "openvino", int8=True)
    record = export.with_name(f"{weights.stem}-{imgsz}_int8_check.json")
    sha = file_sha256(weights)
    if record.exists():
        try:
            cached = Int8Check(
                **{k: v for k, v in json.loads(record.read_text()).items() if k != "ap50_change"}
            )
        except (ValueError, TypeError):
            cached = None
        if cached and cached.weights_sha256 == sha and cached.max_drop == max_drop:
            return (export if cached.passed and export.exists() else None), cached
    t0 = time.time()
    data_yaml = storage.local_path(*layout.dataset(task), layout.DATA_YAML)
    tested = test_split(storage, task)
    if not data_yaml.exists() or tested is None:
        return None, Int8Check(
            FAILED,
            f"no dataset for {task} to calibrate on and check against: materialise yolo_datasets",
            sha,
            max_drop,
        )
    images, gt = tested
    n_val = _val_count(data_yaml)
    if n_val == 0 or images.empty:
        return None, Int8Check(
            FAILED,
            f"{task}'s dataset has {n_val} val image(s) to calibrate on and {len(images)} test "
            "image(s) to check against: both are needed",
            sha,
            max_drop,
        )
    log_line(f"{task}: INT8 calibration on {n_val} val image(s), imgsz {imgsz}")
    export = export_int8(weights, imgsz, storage.local(*layout.dataset(task), layout.DATA_YAML))
    floor = rule.at(conf=AP_FLOOR)
    float_ap = test_map50(
        gt, detect_images(load_model(weights), images, floor, imgsz, classes), classes, rule
    )
    runner = OpenVinoRunner(export, imgsz, THROUGHPUT)
    int8_ap = test_map50(gt, detect_paths(runner, images, floor, classes), classes, rule)
    passed = (
        not math.isnan(float_ap)
        and not math.isnan(int8_ap)
        and float_ap - int8_ap <= max_drop + 1e-9
    )
    reason = (
        f"test AP50 {int8_ap:.3f} (INT8) against {float_ap:.3f} (float) on {len(images)} test "
        f"image(s): {'within' if passed else 'more than'} the {max_drop:g} allowed"
    )
    check = Int8Check(
        PASSED if passed else FAILED,
        reason,
        sha,
        max_drop,
        float_ap,
        int8_ap,
        len(images),
        n_val,
        round(time.time() - t0, 1),
    )
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps(check.as_dict(), indent=2))
    os.replace(tmp, record)
    log_line(f"{task}: INT8 check {check.verdict}: {reason}")
    return (export if passed else None), check
