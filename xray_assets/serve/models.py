"""The served panel's models: which version, which detection rule, which runtime.

Each served task's model is the profile's MLflow `champion` of `<prefix>-<task>` (the gate's alias),
else its latest registered version, else the graph's latest weights under the storage root. The
detection rule (conf, iou, class-agnostic, max boxes) is the one tuning chose and evaluation scored,
read from the version's tags (written at the gate), else from `tuning/<task>/best.json`. Boxes come
from `core.detection.detect`, the evaluation's own call. The fast CPU path exports the weights once
per version to OpenVINO (default) or ONNX, cached under `<storage>/<profile>/serve/<task>/v<version>/`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import tracking
from ..config import ServeTolerance, Settings, configure_ultralytics, current
from ..core import layout
from ..core.classes import SERVED_TASKS, TASKS
from ..core.detection import DetectionRule, detect
from ..records import ModelRecord, find_rule
from ..storage import Storage
from .exports import EXPORTS, export_model
from .quantize import (
    FAILED,
    OFF,
    PYTORCH,
    CheckRequest,
    ServingCheck,
    check_fast_paths,
    path_export,
)

log = logging.getLogger("xray_assets.serve")


class PanelError(RuntimeError):
    """A served model cannot be found or loaded; says which and what to run."""


@dataclass
class ServedModel:
    task: str
    version: str
    chosen: str  # "champion", "latest" (registry) or "storage" (no registry entry)
    rule: DetectionRule
    imgsz: int
    classes: list[str]
    weights: Path
    backend: str = "openvino"
    profile: str = ""
    init: str = "unknown"  # pretrained:<file> or scratch
    trained_on_synthetic: bool | None = None
    model: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the OpenVINO backend: INT8 where its check passes ("auto"), or never ("off")
    int8: str = "off"
    serve_tolerance: ServeTolerance = field(default_factory=ServeTolerance)
    #: where the task's dataset lies (calibration and the accuracy check); None: the float export
    #: serves unchecked (nothing to check it against)
    storage: Storage | None = None
    #: the OpenVINO backend's compiled model, what it runs in, and the accuracy check's verdict
    runner: object = None
    precision: str = ""
    check: ServingCheck | None = None
    #: OpenVINO's performance hint: LATENCY (one request at a time) or THROUGHPUT (many images)
    hint: str = "LATENCY"
    #: the annotation queue's scorer: the path its ranking check chose, not the panel's
    for_queue: bool = False

    @property
    def conf(self) -> float:
        return self.rule.conf

    @property
    def iou(self) -> float:
        return self.rule.iou

    def load(self, log_line=None) -> "ServedModel":
        """The model ready to detect; `log_line` hears the INT8 calibration and the check."""
        if self.backend == "openvino":
            return self._load_openvino(log_line or log.info)
        path = (
            export_model(self.weights, self.imgsz, self.backend)
            if self.backend in EXPORTS
            else self.weights
        )
        return self._load_ultralytics(path)

    def _load_ultralytics(self, path: Path) -> "ServedModel":
        configure_ultralytics()
        from ultralytics import YOLO

        self.model = YOLO(str(path), task="detect")
        self.precision = "f32"
        # warm-up: the first call builds sessions
        self.detect(np.zeros((self.imgsz, self.imgsz), np.uint8))
        return self

    def _load_openvino(self, log_line) -> "ServedModel":
        """The fastest OpenVINO path whose test figures hold against the float weights'
        (`serve.quantize`), else the float weights themselves."""
        from .runtime import OpenVinoRunner

        if self.storage is None:
            self.check = ServingCheck(OFF, "no storage root to check against: float export")
        else:
            try:
                request = CheckRequest(
                    self.weights,
                    self.imgsz,
                    self.rule,
                    self.classes,
                    self.storage,
                    self.task,
                    self.serve_tolerance,
                    int8=self.int8 != "off",
                )
                self.check = check_fast_paths(request, log_line=log_line)
            except Exception as exc:  # a check that cannot run serves what was evaluated
                log.warning(f"{self.task}: fast-path check failed: {exc.__class__.__name__}: {exc}")
                reason = f"the fast-path check failed ({exc.__class__.__name__}: {exc})"[:300]
                self.check = ServingCheck(FAILED, reason, PYTORCH, PYTORCH)
        path = self.check.queue if self.for_queue else self.check.serves
        if path == PYTORCH:
            self._load_ultralytics(self.weights)
            self.precision = "pytorch f32"
            return self
        export, f32 = path_export(self.weights, self.imgsz, path)
        if not export.exists():
            export_model(self.weights, self.imgsz, "openvino")
        self.runner = OpenVinoRunner(export, self.imgsz, self.hint, f32=f32)
        self.precision = self.runner.precision
        self.detect(np.zeros((self.imgsz, self.imgsz), np.uint8))  # warm-up
        return self

    def detect(self, gray: np.ndarray) -> list[dict]:
        """Boxes in the pixels of `gray`, by the task's detection rule."""
        if self.runner is not None:
            from .runtime import letterbox

            x, input_hw = letterbox(gray, self.imgsz)
            return self.boxes(self.runner.infer(x), input_hw, gray.shape[:2])
        with self.lock:  # one ultralytics predictor per model is not thread-safe
            boxes = detect(self.model, gray, self.rule, self.imgsz, self.classes)
        return box_dicts(boxes)

    def boxes(self, raw: np.ndarray, input_hw, orig_hw) -> list[dict]:
        """The fast path's raw outputs of one image as the rule's boxes (original pixels)."""
        from .runtime import boxes_of

        return box_dicts(boxes_of(raw, input_hw, orig_hw, self.rule, self.classes))

    def describe(self) -> dict:
        return {
            "task": self.task,
            "version": self.version,
            "chosen": self.chosen,
            "backend": self.backend,
            "precision": self.precision,
            "int8": self.check.as_dict() if self.check else None,
            "conf": self.conf,
            "iou": self.iou,
            "agnostic_nms": self.rule.agnostic,
            "max_det": self.rule.max_det,
            "rule_chosen": self.rule.chosen,
            "imgsz": self.imgsz,
            "profile": self.profile,
            "init": self.init,
            "trained_on_synthetic": self.trained_on_synthetic,
        }


def box_dicts(boxes) -> list[dict]:
    """A boxes table (`BOX_COLUMNS`) as the API's JSON rows, rounded."""
    return [
        {
            "label": b.label,
            "score": round(float(b.score), 4),
            "x_min": round(float(b.x_min), 1),
            "y_min": round(float(b.y_min), 1),
            "x_max": round(float(b.x_max), 1),
            "y_max": round(float(b.y_max), 1),
        }
        for b in boxes.itertuples(index=False)
    ]


def _registry_weights(
    settings: Settings, name: str, st: Storage, task: str
) -> tuple[Path, str, str, dict] | None:
    """(weights, version, how chosen, version tags) from the MLflow registry, or None."""
    try:
        version, chosen = tracking.served_version(settings.mlflow_tracking_uri, name)
    except Exception as exc:  # an unreachable tracking server must not hide the local fallback
        log.warning(
            f"{name}: MLflow registry unavailable ({exc.__class__.__name__}); using local weights"
        )
        return None
    if version is None:
        return None
    info = tracking.version_info(settings.mlflow_tracking_uri, name, version)
    weights = tracking.fetch_weights(
        settings.mlflow_tracking_uri, info["run_id"], st.dir(*layout.served_version(task, version))
    )
    return weights, str(version), chosen, info["tags"]


def resolve(settings: Settings, task: str, backend: str = "openvino") -> ServedModel:
    profile, st = settings.config, settings.storage
    spec = TASKS[task]
    found = _registry_weights(settings, profile.model_name(task), st, task)
    info = ModelRecord.find(st, task)
    if found is None:
        if info is None:
            raise PanelError(
                f"no model for {task} ({profile.name} profile): materialise the graph first (make demo, "
                f"or xray-assets materialize --profile {profile.name}) so that "
                f"{st.root / 'models' / task} holds weights"
            )
        found = (
            st.local(*layout.weights(task)),
            info.model_version or "local",
            "storage",
            {},
        )
    weights, version, chosen, tags = found
    rule = DetectionRule.from_tags(tags) if "nms_conf" in tags else find_rule(st, task)
    if rule is None:
        raise PanelError(f"no detection rule for {task}: materialise nms_thresholds")
    imgsz = int(tags.get("imgsz") or (info.imgsz if info else 640))
    synthetic = tags.get("trained_on_synthetic", info.trained_on_synthetic if info else None)
    return ServedModel(
        task=task,
        version=version,
        chosen=chosen,
        rule=rule,
        imgsz=imgsz,
        classes=list(spec.classes),
        weights=weights,
        backend=backend,
        profile=tags.get("profile", info.profile if info else profile.name),
        init=tags.get("init", info.init if info else "unknown"),
        trained_on_synthetic=None if synthetic is None else str(synthetic).lower() == "true",
        int8=settings.int8,
        serve_tolerance=settings.serve_tolerance,
        storage=st,
    )


def load_panel(
    settings: Settings | None = None, backend: str = "openvino", tasks=SERVED_TASKS
) -> list[ServedModel]:
    settings = settings or current()
    panel = []
    for task in tasks:
        t0 = time.time()
        m = resolve(settings, task, backend).load()
        record_check(settings, m)
        log.info(
            f"{task}: v{m.version} ({m.chosen}), {backend} {m.precision}, {m.rule.describe()}, "
            f"imgsz {m.imgsz}, init {m.init}, loaded in {time.time() - t0:.1f}s"
            + (f"; {m.check.reason}" if m.check else "")
        )
        panel.append(m)
    return panel


def record_check(settings: Settings, m: ServedModel) -> None:
    """The INT8 check's verdict and figures as tags on the served registry version."""
    if m.check is None or m.chosen not in ("champion", "latest"):
        return
    try:
        tracking.tag_version(
            settings.mlflow_tracking_uri,
            settings.config.model_name(m.task),
            m.version,
            m.check.tags(),
        )
    except Exception as exc:  # the panel serves whether or not the registry takes the tags
        log.warning(f"{m.task}: INT8 check not tagged on v{m.version} ({exc.__class__.__name__})")
