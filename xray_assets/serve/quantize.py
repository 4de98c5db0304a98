"""What the fast path serves: the evaluated model's figures, held to both sides.

The float weights (PyTorch, the evaluation's own pass) are the model that was evaluated and gated.
A faster path serves only where its test figures match theirs within a tolerance **in both
directions**: a path that gains a lot is a different detector, which no report measured. The paths,
fastest first:

1. `int8`: NNCF's post-training quantisation of the OpenVINO export, calibrated on the task's own val
   images (its dataset's `data.yaml`, split `val`; never test), through ultralytics' export with
   `int8=True` (the detection head kept in float);
2. `float`: the float OpenVINO export at the precision the CPU plugin picks (bf16 where the CPU has
   AMX or AVX-512 BF16, else f32): another precision, so it is checked like INT8;
3. `f32`: the float export held at f32 (only where the plugin picked something else).

Each path's figures come from the evaluation's code over every test image, at the AP floor, through
the task's detection rule: threshold-free AP50 (`ServeTolerance.ap50`, default 0.01) and the
operating point, micro precision and recall at the tuned conf (`ServeTolerance.operating_point`,
default 0.02). The panel serves on the first path that holds; where none does, the float weights
themselves serve (PyTorch). The annotation queue ranks on the first path that holds *and* whose
acquisition scores of the test images rank like the float weights' (Spearman correlation at least
`ServeTolerance.rank_correlation`, default 0.9): INT8 can keep AP50 and still reorder the uncertain
images the queue is about.

The check runs on the CPU that will serve: its verdict is cached beside the weights (per registered
version under `serve/<task>/v<version>/`, `<stem>-<imgsz>_serving_check.json`) keyed by the weights'
sha256, the tolerances and the CPU's instruction sets (`runtime.cpu_signature`), so the same storage
root on another CPU checks again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..config import ServeTolerance
from ..core import acquisition, atomic, layout
from ..core.detection import AP_FLOOR, DetectionRule, detect_images, load_model
from ..core.dicom import file_sha256
from ..core.evaluation import split
from ..core.metrics import evaluate, summarise
from .exports import export_model, export_path

log = logging.getLogger("xray_assets.serve")

#: the INT8 verdicts
PASSED, FAILED, OFF = "passed", "failed", "off"
#: the fast paths, fastest first (module docstring), and the path of last resort
INT8, FLOAT, F32, PYTORCH = "int8", "float", "f32", "pytorch"
#: the figures held to the tolerance: name in the check -> its name in words
FIGURES = {"map50": "AP50", "precision": "precision", "recall": "recall"}


@dataclass
class PathCheck:
    """One fast path's test figures against the float weights'."""

    path: str  # int8, float or f32
    precision_name: str = ""  # what the CPU plugin ran: int8, bf16 or f32
    map50: float | None = None
    precision: float | None = None
    recall: float | None = None
    rank_correlation: float | None = None
    #: each figure outside its tolerance, in words ("AP50 +0.279 (allowed ±0.01)")
    moved: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def holds(self) -> bool:
        return not self.error and not self.moved

    def ranks(self, tolerance: ServeTolerance) -> bool:
        return (
            self.holds
            and self.rank_correlation is not None
            and self.rank_correlation >= tolerance.rank_correlation - 1e-9
        )

    def describe(self) -> str:
        if self.error:
            return f"{self.path}: {self.error}"
        figures = f"AP50 {_fmt(self.map50)}, P {_fmt(self.precision)}, R {_fmt(self.recall)}"
        moved = "moved " + "; ".join(self.moved) if self.moved else "within tolerance"
        return f"{self.path} ({self.precision_name}): {figures}, {moved}"


@dataclass
class ServingCheck:
    """Which path serves the panel and which the queue ranks on, and the figures that decided."""

    verdict: str  # INT8's: passed (it serves), failed, or off (not tried)
    reason: str
    serves: str = FLOAT  # int8, float, f32 or pytorch
    queue: str = FLOAT
    weights_sha256: str = ""
    cpu: str = ""
    tolerance: dict = field(default_factory=lambda: asdict(ServeTolerance()))
    float_test_map50: float | None = None
    float_precision: float | None = None
    float_recall: float | None = None
    paths: list[PathCheck] = field(default_factory=list)
    test_images: int = 0
    calibration_images: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def path(self, name: str) -> PathCheck | None:
        return next((p for p in self.paths if p.path == name), None)

    @property
    def int8_test_map50(self) -> float | None:
        p = self.path(INT8)
        return p.map50 if p else None

    @property
    def change(self) -> float | None:
        """INT8 AP50 minus float AP50 (negative: INT8 lost accuracy)."""
        if self.float_test_map50 is None or self.int8_test_map50 is None:
            return None
        return self.int8_test_map50 - self.float_test_map50

    def moved(self, name: str = INT8) -> str:
        p = self.path(name)
        return "; ".join(p.moved) if p and p.moved else ""

    def tags(self) -> dict[str, str]:
        """The check as registry tags on the model version."""
        out = {
            "int8_check": self.verdict,
            "int8_reason": self.reason[:250],
            "serving_path": self.serves,
            "queue_path": self.queue,
        }
        if self.moved():
            out["int8_moved"] = self.moved()[:250]
        for key in ("float_test_map50", "int8_test_map50"):
            value = getattr(self, key)
            if value is not None:
                out[key] = f"{value:.4f}"
        return out

    def as_dict(self) -> dict:
        """The check as JSON (a figure the split cannot give, NaN, is null: /health serves it)."""
        d = {**asdict(self), "int8_test_map50": self.int8_test_map50, "ap50_change": self.change}
        return _nan_to_none(d)

    @classmethod
    def from_dict(cls, d: dict) -> "ServingCheck":
        d = {k: v for k, v in d.items() if k not in ("int8_test_map50", "ap50_change")}
        d["paths"] = [PathCheck(**p) for p in d.get("paths", [])]
        return cls(**d)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def export_int8(weights: Path, imgsz: int, data_yaml: Path) -> Path:
    """NNCF INT8 OpenVINO export of `weights`, calibrated on `data_yaml`'s val split, beside the
    weights, once."""
    return export_model(weights, imgsz, "openvino", calibration=data_yaml)


def path_export(weights: Path, imgsz: int, path: str) -> tuple[Path, bool]:
    """(the export a fast path runs, whether it is held at f32)."""
    return export_path(Path(weights), imgsz, "openvino", int8=path == INT8), path == F32


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


def test_figures(gt: pd.DataFrame, dets: pd.DataFrame, classes, rule: DetectionRule) -> dict:
    """Threshold-free AP50 and the micro operating point at the rule's conf, as the evaluation
    computes them (its table, its summary)."""
    s = summarise(evaluate(gt, dets, list(classes), conf=rule.conf))
    return {"map50": s["map50"], "precision": s["precision_micro"], "recall": s["recall_micro"]}


def test_map50(gt: pd.DataFrame, dets: pd.DataFrame, classes, rule: DetectionRule) -> float:
    """Threshold-free AP50 as the evaluation computes it."""
    return float(test_figures(gt, dets, classes, rule)["map50"])


def queue_scores(images: pd.DataFrame, gt: pd.DataFrame, dets: pd.DataFrame) -> pd.Series:
    """The annotation queue's score of every test image from `dets`, its boxed findings taken as
    the listed ones (image_id -> score)."""
    listed = gt.groupby("image_id")["label"].agg(lambda s: sorted(set(s)))
    cands = pd.DataFrame(
        {
            "image_id": list(images["image_id"]),
            "findings": [listed.get(i, []) for i in images["image_id"]],
        }
    )
    return acquisition.score_images(cands, dets, "check").set_index("image_id")["score"]


def rank_agreement(a: pd.Series, b: pd.Series) -> float:
    """Spearman correlation of two score vectors over the same images; 1 where both are constant
    and equal (nothing to rank, nothing reordered), 0 where only one is constant."""
    a, b = a.astype(float), b.reindex(a.index).astype(float)
    if a.nunique() <= 1 or b.nunique() <= 1:
        return 1.0 if a.nunique() <= 1 and b.nunique() <= 1 and (a - b).abs().max() < 1e-6 else 0.0
    return float(a.corr(b, method="spearman"))


def moved_figures(ref: dict, got: dict, tolerance: ServeTolerance) -> list[str]:
    """The figures of `got` outside their tolerance of `ref`, either way, in words. A figure the
    split cannot give (NaN) on one side only has moved."""
    out = []
    for key, name in FIGURES.items():
        allowed = tolerance.ap50 if key == "map50" else tolerance.operating_point
        a, b = ref.get(key), got.get(key)
        a_nan, b_nan = a is None or math.isnan(a), b is None or math.isnan(b)
        if a_nan and b_nan:
            continue
        if a_nan != b_nan:
            out.append(
                f"{name} {'undefined' if b_nan else f'{b:.3f}'} against "
                f"{'undefined' if a_nan else f'{a:.3f}'} (allowed ±{allowed:g})"
            )
        elif abs(b - a) > allowed + 1e-9:
            out.append(f"{name} {b - a:+.3f} ({b:.3f} against {a:.3f}; allowed ±{allowed:g})")
    return out


def choose(paths: list[PathCheck], tolerance: ServeTolerance) -> tuple[str, str]:
    """(the panel's path, the queue's path): the first that holds (and ranks, for the queue),
    else the float weights themselves."""
    serves = next((p.path for p in paths if p.holds), PYTORCH)
    queue = next((p.path for p in paths if p.ranks(tolerance)), PYTORCH)
    return serves, queue


def _cached(
    record: Path, sha: str, tolerance: ServeTolerance, cpu: str, int8: bool = True
) -> ServingCheck | None:
    if not record.exists():
        return None
    try:
        cached = ServingCheck.from_dict(json.loads(record.read_text()))
    except (ValueError, TypeError, KeyError):
        return None
    same = (
        cached.weights_sha256 == sha
        and cached.tolerance == asdict(tolerance)
        and cached.cpu == cpu
        and (cached.verdict == OFF) == (not int8)  # INT8 tried exactly where it is on
    )
    return cached if same else None


@dataclass
class CheckRequest:
    """What a serving check checks: a model's float weights at its input size with its detection
    rule, on its task's test split under the storage root, within the tolerances; INT8 tried or not."""

    weights: Path
    imgsz: int
    rule: DetectionRule
    classes: list
    storage: object
    task: str
    tolerance: ServeTolerance = field(default_factory=ServeTolerance)
    int8: bool = True

    @property
    def data_yaml(self) -> Path:
        return self.storage.local_path(*layout.dataset(self.task), layout.DATA_YAML)


def check_fast_paths(request: CheckRequest, log_line=log.info) -> ServingCheck:
    """The cached check when the weights, tolerances and CPU are the same, else check each fast
    path now against the float weights on the task's test split (module docstring)."""
    from .runtime import cpu_signature

    weights, task, tolerance, int8 = (
        Path(request.weights),
        request.task,
        request.tolerance,
        request.int8,
    )
    record = weights.with_name(f"{weights.stem}-{request.imgsz}_serving_check.json")
    sha, cpu = file_sha256(weights), cpu_signature()
    cached = _cached(record, sha, tolerance, cpu, int8)
    if cached is not None:
        return cached
    t0 = time.time()
    base = {"weights_sha256": sha, "cpu": cpu, "tolerance": asdict(tolerance)}
    tested = test_split(request.storage, task)
    if not request.data_yaml.exists() or tested is None or tested[0].empty:
        why = f"no test images for {task} to check a fast path against: materialise yolo_datasets"
        return ServingCheck(FAILED if int8 else OFF, why, PYTORCH, PYTORCH, **base)
    images, gt = tested
    floor = request.rule.at(conf=AP_FLOOR)
    reference = detect_images(load_model(weights), images, floor, request.imgsz, request.classes)
    ref = test_figures(gt, reference, request.classes, request.rule)
    n_val = _val_count(request.data_yaml) if int8 else 0
    paths = _check_paths(
        request, images, gt, (ref, queue_scores(images, gt, reference)), n_val, log_line
    )
    serves, queue = choose(paths, tolerance)
    int8_check = next((p for p in paths if p.path == INT8), None)
    verdict = OFF if not int8 else PASSED if int8_check and int8_check.holds else FAILED
    reason = summary(serves, queue, paths, ref, len(images), tolerance)
    check = ServingCheck(
        verdict,
        reason,
        serves,
        queue,
        **base,
        float_test_map50=ref["map50"],
        float_precision=ref["precision"],
        float_recall=ref["recall"],
        paths=paths,
        test_images=len(images),
        calibration_images=n_val,
        seconds=round(time.time() - t0, 1),
    )
    atomic.write_text(record, json.dumps(check.as_dict(), indent=2))
    log_line(f"{task}: {reason}")
    return check


def _check_paths(request: CheckRequest, images, gt, reference, n_val: int, log_line) -> list:
    """Each fast path in order (INT8, the plugin's float, f32) exported, run on the test images
    and compared with the float weights' figures and queue ranking (`reference`), until one
    serves and ranks."""
    ref, ref_scores = reference
    paths: list[PathCheck] = []
    for name in (INT8, FLOAT, F32) if request.int8 else (FLOAT, F32):
        if name == F32 and any(p.precision_name == "f32" for p in paths if p.path == FLOAT):
            continue  # the plugin's own precision is f32 on this CPU: already checked
        check, dets = _run_path(request, name, images, n_val, log_line)
        paths.append(check)
        if dets is None:
            log_line(f"{request.task}: fast path {check.describe()}")
            continue
        got = test_figures(gt, dets, request.classes, request.rule)
        check.map50, check.precision, check.recall = (got[k] for k in FIGURES)
        check.moved = moved_figures(ref, got, request.tolerance)
        check.rank_correlation = round(
            rank_agreement(ref_scores, queue_scores(images, gt, dets)), 4
        )
        log_line(
            f"{request.task}: fast path {check.describe()}, queue rank correlation "
            f"{check.rank_correlation:.3f}"
        )
        if check.ranks(request.tolerance):
            break  # the fastest path that serves and ranks: nothing slower is needed
    return paths


def _run_path(request: CheckRequest, name: str, images, n_val: int, log_line):
    """(the path's check, its detections at the AP floor; None when its export or run failed)."""
    from .runtime import THROUGHPUT, OpenVinoRunner, detect_paths

    check, weights, task = PathCheck(name), Path(request.weights), request.task
    try:
        if name == INT8:
            if n_val == 0:
                raise ValueError(f"{task}'s dataset has no val image to calibrate on")
            log_line(f"{task}: INT8 calibration on {n_val} val image(s), imgsz {request.imgsz}")
            export_int8(
                weights,
                request.imgsz,
                request.storage.local(*layout.dataset(task), layout.DATA_YAML),
            )
        else:
            export_model(weights, request.imgsz, "openvino")
        export, f32 = path_export(weights, request.imgsz, name)
        runner = OpenVinoRunner(export, request.imgsz, THROUGHPUT, f32=f32)
        check.precision_name = runner.precision
        floor = request.rule.at(conf=AP_FLOOR)
        return check, detect_paths(runner, images, floor, request.classes)
    except Exception as exc:  # a failed export or run leaves the next path to try
        check.error = f"{exc.__class__.__name__}: {exc}"[:300]
        return check, None


def summary(serves: str, queue: str, paths: list[PathCheck], ref: dict, n: int, tol) -> str:
    """One paragraph: what serves, what the queue ranks on, and each path's figures."""
    float_figures = (
        f"float weights AP50 {_fmt(ref['map50'])}, P {_fmt(ref['precision'])}, "
        f"R {_fmt(ref['recall'])} on {n} test image(s)"
    )
    tried = "; ".join(p.describe() for p in paths) or "no fast path tried"
    return (
        f"serves {serves}, queue ranks on {queue} ({float_figures}; allowed ±{tol.ap50:g} AP50, "
        f"±{tol.operating_point:g} P and R, queue rank correlation >= {tol.rank_correlation:g}): "
        f"{tried}"
    )
