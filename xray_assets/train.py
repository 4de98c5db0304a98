"""Training one YOLO model per task through ultralytics, tracked in one MLflow run.

A `TrainRequest` says what to train; `tracking.TrainingRun` says which MLflow run records it.
MLflow: one run per model, opened and closed by `tracking.training_run`; ultralytics' own MLflow
callback finds it active and logs its params, per-epoch metrics and artefacts into that same run
(it never opens a second one, and it never closes a run it did not open). The weights are
registered as `xray-<task>`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import tracking
from .config import (
    NO_EFFECT_FOR_DETECTION,
    TrainParams,
    configure_ultralytics,
    default_weights_dir,
)
from .core import atomic, compat, layout


class InitError(FileNotFoundError):
    """No starting weights: says which file, and the folder to put it in."""


@dataclass(frozen=True)
class Init:
    """A model's starting point: a pretrained checkpoint (file, sha256, size) or the yaml (scratch)."""

    kind: str  # "pretrained" or "scratch"
    source: str  # the checkpoint's path, or the architecture yaml
    sha256: str | None = None
    size: int | None = None
    note: str = ""  # how it was found (for the logs)

    @property
    def label(self) -> str:
        return f"pretrained:{Path(self.source).name}" if self.kind == "pretrained" else "scratch"

    def as_dict(self) -> dict:
        return {
            "init": self.label,
            "init_source": self.source,
            "init_sha256": self.sha256 or "",
            "init_bytes": self.size or 0,
        }


def _pretrained(path: Path, note: str) -> Init:
    from .core.dicom import file_sha256

    return Init("pretrained", str(path), file_sha256(path), path.stat().st_size, note)


def resolve_init(
    params: TrainParams,
    weights: str | None = None,
    from_scratch: bool = False,
    weights_dir: Path | None = None,
    allow_downloads: bool = False,
    log: Callable[[str], None] = print,
) -> Init:
    """The starting weights, in this order: `weights` (a path given by config; missing is an error);
    `from_scratch` (the yaml, on purpose); `weights_dir/<params.pretrained>`; ultralytics' own
    download into `weights_dir` where allowed; otherwise an InitError naming the file and the folder
    when the profile requires a pretrained start, else the yaml (and the log says so)."""
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise InitError(f"weights file {weights} does not exist (config `weights`)")
        return _pretrained(p.resolve(), "config `weights`")
    if from_scratch or not params.pretrained:
        return Init(
            "scratch",
            params.model,
            note="from_scratch: true" if from_scratch else "no pretrained file named",
        )
    folder = Path(weights_dir or default_weights_dir()).expanduser()
    local = folder / params.pretrained
    if local.is_file():
        return _pretrained(local.resolve(), f"found in {folder}")
    if allow_downloads:
        folder.mkdir(parents=True, exist_ok=True)
        log(f"downloading {params.pretrained} into {folder} (ultralytics' release assets)")
        configure_ultralytics()
        from ultralytics.utils.downloads import attempt_download_asset

        got = Path(attempt_download_asset(local))
        if got.is_file():
            return _pretrained(got.resolve(), "downloaded by ultralytics")
    if params.require_pretrained:
        raise InitError(
            f"no pretrained weights: {params.pretrained} is not in {folder}"
            + (
                ""
                if allow_downloads
                else " and downloads are not allowed here (XRAY_ALLOW_DOWNLOADS=0 or offline)"
            )
            + f". Put {params.pretrained} in {folder} (or set XRAY_WEIGHTS_DIR), give the task's `weights` config a "
            "path, or set `from_scratch: true` to train from random weights on purpose."
        )
    log(
        f"no {params.pretrained} in {folder}: building {params.model} from scratch (random weights); put the "
        f"file there for a pretrained start"
    )
    return Init("scratch", params.model, note=f"no {params.pretrained} in {folder}")


@dataclass
class TrainResult:
    weights: Path
    run_id: str
    experiment_id: str
    model_version: str | None
    metrics: dict[str, float]
    results_csv: Path | None
    results_png: Path | None
    save_dir: Path
    seconds: float
    dropped_args: dict[str, Any]


def ultralytics_train_args(params: TrainParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arguments this ultralytics accepts, arguments it does not know and that are left out)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args = params.ultralytics_args()
    known = {k: v for k, v in args.items() if k in DEFAULT_CFG_DICT}
    dropped = {k: v for k, v in args.items() if k not in DEFAULT_CFG_DICT}
    return known, dropped


@dataclass(frozen=True)
class TrainRequest:
    """One training: what to train on, from where, into which folder.

    `model_name`: the registered model (default `xray-<task>`; `register=False` registers none).
    `resume`: continue a killed training from `out_dir/train/weights/last.pt`, in the same MLflow
    run. `callbacks`: extra ultralytics callbacks by event name (tests, progress)."""

    task: str
    data_yaml: Path
    params: TrainParams
    out_dir: Path
    init: Init
    model_name: str | None = None
    device: str | None = None
    resume: bool = False
    register: bool = True
    callbacks: dict[str, Callable] = field(default_factory=dict)

    @property
    def last(self) -> Path:
        return self.out_dir / "train" / "weights" / layout.LAST_WEIGHTS


def _epoch_logger(task: str, log: Callable[[str], None]):
    def on_epoch(trainer):
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        shown = {
            **losses,
            **{k: v for k, v in (trainer.metrics or {}).items() if "mAP50" in k or "recall" in k},
        }
        log(
            f"{task}: epoch {min(trainer.epoch + 1, trainer.epochs)}/{trainer.epochs} "
            + " ".join(f"{k.split('/')[-1]}={float(v):.3f}" for k, v in shown.items())
        )

    return on_epoch


def _fit(model, request: TrainRequest, args: dict[str, Any], log: Callable[[str], None]) -> None:
    if request.resume:
        log(f"{request.task}: resuming from {request.last}")
        model.train(resume=True)
    else:
        model.train(
            data=str(request.data_yaml),
            project=str(request.out_dir),
            name="train",
            exist_ok=True,
            device=request.device,
            verbose=False,
            **args,
        )


def _log_params(run, params, init, dropped) -> None:
    """The run's params (the profile's and the start's), what was not passed to ultralytics and
    what it ignores for box detection."""
    tracking.log_training_params(
        {**run.params, **init.as_dict()},
        not_passed=dropped,
        no_effect={
            k: f"{getattr(params, k)} (ultralytics ignores it for box detection)"
            for k in NO_EFFECT_FOR_DETECTION
            if getattr(params, k, None)
        },
        tags={"init": init.label, "init_sha256": init.sha256 or ""},
    )


def _init_words(init) -> str:
    if init.sha256:
        return f"{init.source}, sha256 {init.sha256[:12]}, {init.size} bytes"
    return f"{init.source}; {init.note}"


def _register(request, run, active):
    """The trained weights registered under the task's model name, with where they come from."""
    kept = ("dataset_hash", "profile", "task", "trained_on_synthetic")
    return tracking.register_training(
        active,
        request.model_name or f"xray-{request.task}",
        request.task,
        {
            **{k: v for k, v in run.tags.items() if k in kept},
            "init": request.init.label,
            "init_sha256": request.init.sha256 or "",
        },
    )


def train(
    request: TrainRequest, run: tracking.TrainingRun, log: Callable[[str], None] = print
) -> TrainResult:
    """Train `request` (its start: `resolve_init`) inside the MLflow run `run` describes; return the
    best weights, the run and the registered version."""
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    params, init = request.params, request.init
    if request.resume and not request.last.exists():
        raise FileNotFoundError(
            f"resume: no checkpoint at {request.last}; materialise without `resume` first"
        )
    SETTINGS.update({"mlflow": True, "sync": False})
    compat.mlflow_callback_always_logs()
    args, dropped = ultralytics_train_args(params)
    if dropped:
        log(
            f"ultralytics {__import__('ultralytics').__version__} has no argument(s) {sorted(dropped)}: "
            "recorded in MLflow, not passed"
        )
    request.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tracking.training_run(run, request.task, request.out_dir, request.resume) as active:
        if not active.reopened:
            _log_params(run, params, init, dropped)
        log(f"{request.task}: starting from {init.label} ({_init_words(init)})")
        model = YOLO(str(request.last) if request.resume else init.source)
        model.add_callback("on_fit_epoch_end", _epoch_logger(request.task, log))
        if request.resume:
            # ultralytics' callback refuses a reopened run (its `resume` arg changed): log epochs here
            model.add_callback("on_fit_epoch_end", tracking.log_epoch)
        for event, fn in request.callbacks.items():
            model.add_callback(event, fn)
        _fit(model, request, args, log)
        trainer = model.trainer
        save_dir = Path(trainer.save_dir)
        best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
        final = {
            k.replace("(B)", "").replace("metrics/", "val_"): float(v)
            for k, v in (trainer.metrics or {}).items()
        }
        weights_out = request.out_dir / layout.BEST_WEIGHTS
        atomic.copy_file(best, weights_out)
        tracking.log_training_outputs(active.run_id, best.parent, save_dir, final)
        version = _register(request, run, active) if request.register else None
    results_csv = save_dir / "results.csv"
    results_png = save_dir / "results.png"
    return TrainResult(
        weights=weights_out,
        run_id=active.run_id,
        experiment_id=active.experiment_id,
        model_version=version,
        metrics=final,
        results_csv=results_csv if results_csv.exists() else None,
        results_png=results_png if results_png.exists() else None,
        save_dir=save_dir,
        seconds=time.time() - t0,
        dropped_args=dropped,
    )
