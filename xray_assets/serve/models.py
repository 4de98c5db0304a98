"""The served panel's models: which version, which thresholds, which runtime.

Each served task's model is its MLflow `champion` (the gate's alias), else its latest registered
version, else the graph's latest weights under the storage root. Thresholds come from the version's
tags (written at the gate), else `tuning/<task>/best.json`. The fast CPU path exports the weights
once per version to OpenVINO (default) or ONNX (cached under `storage/serve/<task>/v<version>/`)
and runs them through ultralytics, so pre- and post-processing are the training code's own.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Settings, configure_ultralytics
from ..core import champion
from ..core.classes import SERVED_TASKS, TASKS
from ..storage import Storage

log = logging.getLogger("xray_assets.serve")
#: united_multi is served with class-agnostic NMS (the study's demo); the others per class.
AGNOSTIC = {"united_multi"}


class PanelError(RuntimeError):
    """A served model cannot be found or loaded; says which and what to run."""


@dataclass
class ServedModel:
    task: str
    version: str
    chosen: str            # "champion", "latest" (registry) or "storage" (no registry entry)
    conf: float
    iou: float
    imgsz: int
    classes: list[str]
    weights: Path
    backend: str = "openvino"
    agnostic: bool = False
    model: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> "ServedModel":
        configure_ultralytics()
        from ultralytics import YOLO

        path = export_model(self.weights, self.imgsz, self.backend) if self.backend in EXPORTS else self.weights
        self.model = YOLO(str(path), task="detect")
        self.detect(np.zeros((self.imgsz, self.imgsz), np.uint8))   # warm-up: first call builds sessions
        return self

    def detect(self, gray: np.ndarray) -> list[dict]:
        """Boxes in the pixels of `gray` at the tuned thresholds."""
        bgr = np.repeat(gray[:, :, None], 3, axis=2) if gray.ndim == 2 else gray
        with self.lock:   # one ultralytics predictor per model is not thread-safe
            res = self.model.predict(bgr, imgsz=self.imgsz, conf=self.conf, iou=self.iou,
                                     agnostic_nms=self.agnostic, verbose=False, max_det=100)[0]
        b = res.boxes
        out = []
        for (x0, y0, x1, y1), s, c in zip(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy()):
            out.append({"label": self.classes[int(c)], "score": round(float(s), 4), "x_min": round(float(x0), 1),
                        "y_min": round(float(y0), 1), "x_max": round(float(x1), 1), "y_max": round(float(y1), 1)})
        return out

    def describe(self) -> dict:
        return {"task": self.task, "version": self.version, "chosen": self.chosen, "backend": self.backend,
                "conf": self.conf, "iou": self.iou, "imgsz": self.imgsz, "agnostic_nms": self.agnostic}


#: what `ultralytics` exports for each fast backend, and the suffix of the cached export
EXPORTS = {"openvino": "_openvino_model", "onnx": ".onnx"}


def export_model(weights: Path, imgsz: int, backend: str) -> Path:
    """The weights exported for `backend` beside them, once (moved into place atomically), then reused."""
    final = weights.with_name(f"{weights.stem}-{imgsz}{EXPORTS[backend]}")
    if final.exists():
        return final
    configure_ultralytics()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(dir=weights.parent, prefix=".export-") as tmp:
        src = Path(tmp) / weights.name
        shutil.copyfile(weights, src)
        kwargs = {"simplify": False} if backend == "onnx" else {}
        out = YOLO(str(src)).export(format=backend, imgsz=imgsz, dynamic=False, verbose=False, **kwargs)
        os.replace(out, final)
    return final


def _registry_weights(settings: Settings, task: str, st: Storage) -> tuple[Path, str, str, dict] | None:
    """(weights, version, how chosen, version tags) from the MLflow registry, or None."""
    name = f"xray-{task}"
    try:
        version, chosen = champion.served_version(settings.mlflow_tracking_uri, name)
    except Exception as exc:  # an unreachable tracking server must not hide the local fallback
        log.warning(f"{name}: MLflow registry unavailable ({exc.__class__.__name__}); using local weights")
        return None
    if version is None:
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                                 registry_uri=settings.mlflow_tracking_uri)
    mv = client.get_model_version(name, version)
    cache = st.dir("serve", task, f"v{version}")
    weights = cache / "best.pt"
    if not weights.exists():
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{mv.run_id}/weights",
                                                       tracking_uri=settings.mlflow_tracking_uri,
                                                       dst_path=tempfile.mkdtemp(dir=cache)))
        pick = got / "best.pt" if (got / "best.pt").exists() else got / "last.pt"
        if not pick.exists():
            raise PanelError(f"{name} v{version}: its run {mv.run_id} has no weights/best.pt artefact")
        tmp = cache / ".best.pt.tmp"
        shutil.copyfile(pick, tmp)
        os.replace(tmp, weights)
        shutil.rmtree(got.parent if got.name == "weights" else got, ignore_errors=True)
    return weights, str(version), chosen, dict(mv.tags or {})


def resolve(settings: Settings, task: str, backend: str = "openvino") -> ServedModel:
    st = Storage(settings.storage_dir)
    spec = TASKS[task]
    found = _registry_weights(settings, task, st)
    info = st.read_json("models", task, "model.json") if st.exists("models", task, "model.json") else {}
    if found is None:
        if not info:
            raise PanelError(f"no model for {task}: materialise the graph first (make demo, or "
                             f"xray-assets materialize) so that {st.root / 'models' / task} holds weights")
        found = st.local("models", task, "best.pt"), str(info.get("model_version") or "local"), "storage", {}
    weights, version, chosen, tags = found
    if "nms_conf" in tags:
        conf, iou = float(tags["nms_conf"]), float(tags["nms_iou"])
    elif st.exists("tuning", task, "best.json"):
        best = st.read_json("tuning", task, "best.json")
        conf, iou = float(best["conf"]), float(best["iou"])
    else:
        raise PanelError(f"no tuned thresholds for {task}: materialise nms_thresholds")
    imgsz = int(tags.get("imgsz") or info.get("imgsz") or 640)
    return ServedModel(task=task, version=version, chosen=chosen, conf=conf, iou=iou, imgsz=imgsz,
                       classes=list(spec.classes), weights=weights, backend=backend, agnostic=task in AGNOSTIC)


def load_panel(settings: Settings | None = None, backend: str = "openvino", tasks=SERVED_TASKS) -> list[ServedModel]:
    settings = settings or Settings.from_env()
    panel = []
    for task in tasks:
        t0 = time.time()
        m = resolve(settings, task, backend).load()
        log.info(f"{task}: v{m.version} ({m.chosen}), {backend}, conf {m.conf:g} iou {m.iou:g}, "
                 f"imgsz {m.imgsz}, loaded in {time.time() - t0:.1f}s")
        panel.append(m)
    return panel
