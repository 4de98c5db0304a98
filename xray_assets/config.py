"""Profiles (one config object each) and the environment settings every entry point shares.

A profile is data: nothing else in the code branches on a profile's name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.isolation import DecodeLimits
from .core.offline import cache_dir

#: The study's NMS grid (docs/study.md).
STUDY_CONF_GRID: tuple[float, ...] = (0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
STUDY_IOU_GRID: tuple[float, ...] = (0.1, 0.3, 0.5, 0.6, 0.8)


@dataclass(frozen=True)
class ServeTolerance:
    """How far a faster path (INT8, another runtime, another precision) may move the evaluated
    model's test figures, either way, and still serve: `ap50` for threshold-free AP50, and
    `operating_point` for precision and recall (micro) at the tuned conf
    (XRAY_SERVE_AP50_TOLERANCE, XRAY_SERVE_OP_TOLERANCE); the annotation queue also needs the rank
    correlation of its scores with the float weights' to reach `rank_correlation`
    (XRAY_QUEUE_MIN_RANK_CORRELATION)."""

    ap50: float = 0.01
    operating_point: float = 0.02
    rank_correlation: float = 0.9


#: The study's settings that ultralytics' box detection ignores: `copy_paste` pastes segmentation
#: masks (boxes have none) and `erasing` is a classification augmentation. They are passed and logged
#: as the study's, and named as acting on nothing (README, MLflow `xray.no_effect.*`).
NO_EFFECT_FOR_DETECTION: tuple[str, ...] = ("copy_paste", "erasing")


@dataclass(frozen=True)
class TrainParams:
    """ultralytics `train` arguments. Fields left None keep ultralytics' defaults."""

    #: the architecture (a yaml: what "from scratch" builds)
    model: str = "yolov8s.yaml"
    #: the COCO-pretrained checkpoint of that architecture a model starts from, by file name: the
    #: task's `weights` config, else XRAY_WEIGHTS_DIR/<pretrained>, else ultralytics' download where allowed
    pretrained: str | None = "yolov8s.pt"
    #: True: no pretrained file and no permission to download is an error before training starts
    #: (unless `from_scratch: true`); False: build from the yaml and say so
    require_pretrained: bool = True
    epochs: int = 100
    imgsz: int = 800
    batch: int = 64
    optimizer: str = "auto"
    cos_lr: bool = True
    warmup_epochs: float = 15
    close_mosaic: int = 15
    mosaic: float = 1.0
    mixup: float = 0.5
    erasing: float = 0.4
    copy_paste: float = 0.8
    crop_fraction: float | None = 0.0
    cls: float = 1.5
    weight_decay: float = 0.005
    conf: float = 0.03  # NMS confidence for validation during training
    iou: float = 0.8  # NMS IoU for validation during training
    lr0: float | None = None
    workers: int = 8
    #: ultralytics' own training plots (labels, results, curves; a few seconds per model, logged to MLflow)
    plots: bool = True
    seed: int = 0
    patience: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def ultralytics_args(self) -> dict[str, Any]:
        """Keyword arguments for `YOLO.train`, with unset (None) fields left to ultralytics."""
        args = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("model", "pretrained", "require_pretrained", "extra")
            and getattr(self, f.name) is not None
        }
        args.update(self.extra)
        return args


@dataclass(frozen=True)
class Profile:
    name: str
    train: TrainParams
    #: MLflow namespace: experiment `<prefix>-assets`, registered models `<prefix>-<task>`, so the
    #: profiles' models never share a registry entry or a champion alias on one tracking server
    registry_prefix: str = "xray"
    #: may ultralytics download the pretrained weights (XRAY_ALLOW_DOWNLOADS=1/0 overrides)
    allow_downloads: bool = False
    #: leave out of a task's train and val splits the NIH images whose Data_Entry lists a finding of
    #: the task's classes that has no box (True), or keep them for training (False: the default, as
    #: the active-learning simulation measured: benchmarks/bench_active_learning.py, docs/science.md).
    #: The test split always leaves them out: a correct detection there has no box to match
    exclude_unboxed_findings: bool = False
    #: background ("No Finding") images per annotated image
    background_ratio: float = 2.0
    include_vinbigdata_no_finding: bool = False
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    consensus: str = "majority"  # or "wbf"
    wbf_iou: float = 0.4
    #: longest side of converted VinBigData images (pixels)
    dicom_max_size: int = 1024
    conf_grid: tuple[float, ...] = STUDY_CONF_GRID
    iou_grid: tuple[float, ...] = STUDY_IOU_GRID
    #: how many ground-truth-vs-prediction panels an evaluation report draws
    report_panels: int = 4
    #: resamples of the patient-level (cluster) bootstrap behind every 95% interval (seeded by `seed`)
    bootstrap_resamples: int = 1000
    #: a class, subgroup or comparison with fewer test boxes gets "too few test boxes (n)", no interval
    min_test_boxes: int = 10
    #: the champion gate decides on the point estimate only where an equally good model would be kept
    #: out by chance at most this often on the test split at hand (core/champion.py)
    gate_null_rate: float = 0.2
    #: most quarantined input rows an asset check accepts
    max_quarantine_rows: int = 10

    def model_name(self, task: str) -> str:
        return f"{self.registry_prefix}-{task}"

    @property
    def experiment(self) -> str:
        return f"{self.registry_prefix}-assets"

    def as_params(self) -> dict[str, Any]:
        """A flat dict of every setting, for MLflow params and Dagster metadata."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, TrainParams):
                for g in dataclasses.fields(value):
                    flat[f"train.{g.name}"] = getattr(value, g.name)
            else:
                flat[f.name] = value
        return flat


PROFILES: dict[str, Profile] = {
    # The study's numbers, exactly (docs/study.md): YOLOv8s fine-tuned from COCO-pretrained yolov8s.pt.
    "study": Profile(name="study", train=TrainParams(), allow_downloads=True),
    # CPU-sized: the whole graph in minutes on the sample data.
    "demo": Profile(
        name="demo",
        registry_prefix="xray-demo",
        train=TrainParams(
            model="yolov8n.yaml",
            pretrained="yolov8n.pt",
            require_pretrained=False,
            epochs=12,
            imgsz=160,
            batch=8,
            optimizer="AdamW",
            lr0=0.003,
            cos_lr=True,
            warmup_epochs=1,
            close_mosaic=0,
            mosaic=0.0,
            mixup=0.0,
            erasing=0.0,
            copy_paste=0.0,
            cls=1.5,
            weight_decay=0.0005,
            # a CPU budget: no loader processes beside a second run, no ultralytics plots (the
            # evaluation report draws its own), step every batch (no accumulation to 64), decoded
            # images kept in memory, milder geometry, no per-epoch validation (the final one runs)
            workers=0,
            plots=False,
            extra={"nbs": 8, "cache": "ram", "scale": 0.25, "translate": 0.05, "val": False},
        ),
        background_ratio=0.25,
        dicom_max_size=512,
        report_panels=4,
    ),
    # The smallest run that still trains and evaluates every task (tests).
    "smoke": Profile(
        name="smoke",
        registry_prefix="xray-smoke",
        train=TrainParams(
            model="yolov8n.yaml",
            pretrained="yolov8n.pt",
            require_pretrained=False,
            epochs=1,
            imgsz=64,
            batch=8,
            optimizer="AdamW",
            lr0=0.002,
            warmup_epochs=0,
            close_mosaic=0,
            mosaic=0.0,
            mixup=0.0,
            erasing=0.0,
            copy_paste=0.0,
            workers=0,
            plots=False,
            extra={"nbs": 8},
        ),
        background_ratio=0.5,
        dicom_max_size=256,
        conf_grid=(0.03, 0.3),
        iou_grid=(0.5, 0.8),
        report_panels=2,
        bootstrap_resamples=200,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    name = name or env("XRAY_PROFILE")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


#: every setting the environment may give and its default, written once (docs/study.md lists them);
#: `Settings.resolve` reads them, nothing writes them back into os.environ
ENV_DEFAULTS = {
    "XRAY_DATA_DIR": "data/sample",
    "XRAY_STORAGE_DIR": "storage",
    "XRAY_PROFILE": "demo",
    "MLFLOW_TRACKING_URI": "",
    "XRAY_MLFLOW_UI": "http://127.0.0.1:5000",
    "XRAY_INBOX_DIR": "",
    "XRAY_CHAMPION_MARGIN": "0.01",
    "XRAY_WEIGHTS_DIR": "",
    "XRAY_RETRAIN_CRON": "0 3 * * 1",
    "XRAY_ALLOW_DOWNLOADS": "",
    "XRAY_TORCH_THREADS": "",
    "XRAY_MAX_UPLOAD_MB": "50",
    "XRAY_MAX_MEGAPIXELS": str(DecodeLimits.max_megapixels),
    "XRAY_DECODE_WORKERS": str(DecodeLimits.workers),
    "XRAY_DECODE_TIMEOUT_S": str(DecodeLimits.timeout_s),
    "XRAY_DECODE_MEMORY_MB": str(DecodeLimits.memory_mb),
    "XRAY_LABEL_STUDIO_URL": "",
    "XRAY_LABEL_STUDIO_TOKEN": "",
    "XRAY_INT8": "auto",
    "XRAY_SERVE_AP50_TOLERANCE": str(ServeTolerance.ap50),
    "XRAY_SERVE_OP_TOLERANCE": str(ServeTolerance.operating_point),
    "XRAY_QUEUE_MIN_RANK_CORRELATION": str(ServeTolerance.rank_correlation),
}

#: Settings field -> its environment variable (the Dagster resource's fields use the same names)
FIELD_ENV = {
    "data_dir": "XRAY_DATA_DIR",
    "storage_dir": "XRAY_STORAGE_DIR",
    "profile": "XRAY_PROFILE",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_ui_url": "XRAY_MLFLOW_UI",
    "inbox_dir": "XRAY_INBOX_DIR",
    "champion_margin": "XRAY_CHAMPION_MARGIN",
    "weights_dir": "XRAY_WEIGHTS_DIR",
    "retrain_cron": "XRAY_RETRAIN_CRON",
    "allow_downloads": "XRAY_ALLOW_DOWNLOADS",
    "torch_threads": "XRAY_TORCH_THREADS",
    "max_upload_mb": "XRAY_MAX_UPLOAD_MB",
    "label_studio_url": "XRAY_LABEL_STUDIO_URL",
    "label_studio_token": "XRAY_LABEL_STUDIO_TOKEN",
    "int8": "XRAY_INT8",
}


def env(name: str) -> str:
    """A setting's raw value: its environment variable when set (and not empty), else its default."""
    return os.environ.get(name) or ENV_DEFAULTS[name]


def _flag(raw: str) -> bool | None:
    raw = raw.strip().lower()
    return True if raw in ("1", "true", "yes") else False if raw in ("0", "false", "no") else None


def _int8_mode(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in ("auto", "off"):
        raise ValueError(f"XRAY_INT8 must be auto or off, got {raw!r}")
    return mode


@dataclass(frozen=True)
class Settings:
    """The one configuration object: where things live and what a process may do, resolved from
    the environment (docs/study.md) in one place, `resolve`. Every entry point (the
    Dagster resource, the CLI, the web app, the schedule) holds one of these."""

    data_dir: Path
    storage_dir: Path | str  # a folder, or an object-store URL (s3://bucket/prefix)
    profile: str
    mlflow_tracking_uri: str
    mlflow_ui_url: str = ENV_DEFAULTS["XRAY_MLFLOW_UI"]
    inbox_dir: Path | None = None  # default: <data_dir>/inbox
    #: a new model may be this much worse (test mAP50) and still be champion
    champion_margin: float = 0.01
    retrain_cron: str = ENV_DEFAULTS[
        "XRAY_RETRAIN_CRON"
    ]  # the retraining schedule (stopped by default)
    #: pretrained checkpoints by file name; default: <cache root>/weights
    weights_dir: Path | None = None
    #: may ultralytics download pretrained weights: None leaves it to the profile
    allow_downloads: bool | None = None
    #: torch threads per step; None: half the cores (the local instance runs two runs side by side)
    torch_threads: int | None = None
    max_upload_mb: float = 50.0
    #: XRAY_MAX_MEGAPIXELS (what an image may declare), XRAY_DECODE_WORKERS (decodes at once),
    #: XRAY_DECODE_TIMEOUT_S and XRAY_DECODE_MEMORY_MB (what one decode may take)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    #: the annotation tool's API (empty: batches are written as files only)
    label_studio_url: str = ""
    #: its API token: never logged (not in the repr)
    label_studio_token: str = field(default="", repr=False)
    #: the fast path's INT8 models: "auto" (used where the accuracy check passes) or "off"
    int8: str = "auto"
    #: how far a faster path's test figures may move from the float weights' and still serve
    serve_tolerance: ServeTolerance = field(default_factory=ServeTolerance)

    @classmethod
    def resolve(cls, **given: Any) -> "Settings":
        """Each field from `given` (a run's resource config) when not empty, else its environment
        variable, else its default."""

        def raw(name: str) -> str:
            value = given.get(name)
            return str(value) if value not in (None, "") else env(FIELD_ENV[name])

        root = raw("storage_dir")
        storage = root.rstrip("/") if "://" in root else Path(root).expanduser().resolve()
        data = Path(raw("data_dir")).expanduser().resolve()
        inbox, threads = raw("inbox_dir"), raw("torch_threads")
        return cls(
            data_dir=data,
            storage_dir=storage,
            profile=raw("profile"),
            mlflow_tracking_uri=raw("mlflow_tracking_uri") or default_mlflow_uri(storage),
            mlflow_ui_url=raw("mlflow_ui_url"),
            inbox_dir=Path(inbox).expanduser().resolve() if inbox else default_inbox(data),
            champion_margin=float(raw("champion_margin")),
            retrain_cron=raw("retrain_cron"),
            weights_dir=default_weights_dir(raw("weights_dir")),
            allow_downloads=_flag(raw("allow_downloads")),
            torch_threads=int(threads) if threads else None,
            max_upload_mb=float(raw("max_upload_mb")),
            label_studio_url=raw("label_studio_url"),
            label_studio_token=raw("label_studio_token"),
            int8=_int8_mode(raw("int8")),
            serve_tolerance=ServeTolerance(
                ap50=float(env("XRAY_SERVE_AP50_TOLERANCE")),
                operating_point=float(env("XRAY_SERVE_OP_TOLERANCE")),
                rank_correlation=float(env("XRAY_QUEUE_MIN_RANK_CORRELATION")),
            ),
            decode=DecodeLimits(
                max_megapixels=float(env("XRAY_MAX_MEGAPIXELS")),
                workers=int(env("XRAY_DECODE_WORKERS")),
                timeout_s=float(env("XRAY_DECODE_TIMEOUT_S")),
                memory_mb=int(env("XRAY_DECODE_MEMORY_MB")),
            ),
        )

    @classmethod
    def from_env(cls) -> "Settings":
        return cls.resolve()

    @property
    def config(self) -> Profile:
        """The profile's settings (an unknown name is an error naming the choices)."""
        return get_profile(self.profile)

    @property
    def storage(self):
        """This profile's artefacts: <storage_dir>/<profile>/ (profiles never overwrite each other)."""
        from .storage import Storage

        return Storage.for_profile(self.storage_dir, self.config.name)

    @property
    def shared(self):
        """What all profiles share: accepted annotation drops (data, not results)."""
        from .storage import Storage

        return Storage(self.storage_dir)

    def downloads_allowed(self) -> bool:
        """XRAY_ALLOW_DOWNLOADS when set, else the profile's `allow_downloads`."""
        return self.config.allow_downloads if self.allow_downloads is None else self.allow_downloads

    def threads(self) -> int:
        return self.torch_threads or max(1, (os.cpu_count() or 2) // 2)


@functools.cache
def current() -> Settings:
    """This process's settings, resolved once (the CLI, the web app, the schedule)."""
    return Settings.resolve()


def default_weights_dir(raw: str | None = None) -> Path:
    """Where pretrained checkpoints are looked for (and downloaded to, where allowed): `raw`, else
    XRAY_WEIGHTS_DIR, else <cache root>/weights. (Not through `Settings`: training's code version
    follows what this reads, and the profiles' table is not among it.)"""
    raw = raw or env("XRAY_WEIGHTS_DIR")
    return Path(raw).expanduser().resolve() if raw else cache_dir() / "weights"


def default_inbox(data_dir: Path | str) -> Path:
    """Where annotation drops land unless XRAY_INBOX_DIR says otherwise."""
    return Path(data_dir) / "inbox"


def default_mlflow_uri(storage_dir: Path | str) -> str:
    """The embedded store under the storage root; with an object-store root (which sqlite cannot
    live on) a local one under the cache root: a team sets MLFLOW_TRACKING_URI to its server instead."""
    if "://" in str(storage_dir):
        return f"sqlite:///{cache_dir() / 'mlflow' / 'mlflow.db'}"
    return f"sqlite:///{Path(storage_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def configure_ultralytics() -> None:
    """Offline ultralytics (see `core/offline.py`). Call before ultralytics trains, validates or predicts."""
    from .core import offline

    offline.prepare()
