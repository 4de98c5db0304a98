"""Training one YOLO model per task through ultralytics, tracked in one MLflow run.

MLflow: one run per model. We open the run; ultralytics' own MLflow callback finds it active and
logs its params, per-epoch metrics and artefacts into that same run (it never opens a second one,
and it never closes a run it did not open). The weights are registered as `xray-<task>`.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import layout
from ..config import (
    NO_EFFECT_FOR_DETECTION,
    TrainParams,
    configure_ultralytics,
    default_weights_dir,
)


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
    from .dicom import file_sha256

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


def mlflow_experiment(tracking_uri: str, name: str, artifact_root: Path | str | None) -> str:
    """Set the tracking URI and make sure `name` exists, with artefacts under `artifact_root` (a
    folder or a URI such as s3://...) for a local store (a server decides for itself)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        local = artifact_root is not None and not tracking_uri.startswith(("http://", "https://"))
        location = None
        if local:
            location = (
                str(artifact_root)
                if "://" in str(artifact_root)
                else Path(artifact_root).resolve().as_uri()
            )
        return mlflow.create_experiment(name, artifact_location=location)
    return exp.experiment_id


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _callback_always_logs() -> None:
    """ultralytics' MLflow callback stays silent under pytest unless the test's name says mlflow;
    our run is explicit, so the callback must log into it wherever it runs."""
    from ultralytics.utils.callbacks import mlflow as cb

    cb.TESTS_RUNNING = False


def train(
    *,
    task: str,
    data_yaml: Path,
    params: TrainParams,
    out_dir: Path,
    tracking_uri: str,
    experiment: str,
    artifact_root: Path | str | None,
    run_params: dict[str, Any],
    tags: dict[str, str],
    init: Init,
    model_name: str | None = None,
    device: str | None = None,
    resume: bool = False,
    register: bool = True,
    log: Callable[[str], None] = print,
    callbacks: dict[str, Callable] | None = None,
) -> TrainResult:
    """Train from `init` (see `resolve_init`) on `data_yaml`; return the best weights and run.

    `model_name`: the registered model (default `xray-<task>`). `resume`: continue a killed training
    from `out_dir/train/weights/last.pt`, in the same MLflow run (reopened from `out_dir/run.json`).
    """
    configure_ultralytics()
    import mlflow
    from mlflow.tracking import MlflowClient
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    last = out_dir / "train" / "weights" / layout.LAST_WEIGHTS
    run_file = out_dir / "run.json"
    if resume and not last.exists():
        raise FileNotFoundError(
            f"resume: no checkpoint at {last}; materialise without `resume` first"
        )
    SETTINGS.update({"mlflow": True, "sync": False})
    _callback_always_logs()
    args, dropped = ultralytics_train_args(params)
    if dropped:
        log(
            f"ultralytics {__import__('ultralytics').__version__} has no argument(s) {sorted(dropped)}: "
            "recorded in MLflow, not passed"
        )
    # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into this process's environment (for its
    # subprocesses); ultralytics' callback needs it while training, nothing after: it is put back below
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    exp_id = mlflow_experiment(tracking_uri, experiment, artifact_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    import json

    previous = json.loads(run_file.read_text()) if resume and run_file.exists() else None
    if previous:
        run = mlflow.start_run(run_id=previous["run_id"])
        mlflow.set_tags({**tags, "resumed": "true"})
    else:
        run = mlflow.start_run(
            experiment_id=exp_id, run_name=f"{task}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags
        )
        run_file.write_text(json.dumps({"run_id": run.info.run_id, "experiment_id": exp_id}))
    try:
        if not previous:
            # namespaced, so ultralytics' callback can log its own args (task, name, classes...) beside them
            mlflow.log_params(
                {f"xray.{k}": str(v)[:500] for k, v in {**run_params, **init.as_dict()}.items()}
            )
            if dropped:
                mlflow.log_params({f"xray.not_passed.{k}": v for k, v in dropped.items()})
            mlflow.log_params(
                {
                    f"xray.no_effect.{k}": f"{getattr(params, k)} (ultralytics ignores it for box detection)"
                    for k in NO_EFFECT_FOR_DETECTION
                    if getattr(params, k, None)
                }
            )
            mlflow.set_tags({"init": init.label, "init_sha256": init.sha256 or ""})
        log(
            f"{task}: starting from {init.label}"
            + (
                f" ({init.source}, sha256 {init.sha256[:12]}, {init.size} bytes)"
                if init.sha256
                else f" ({init.source}; {init.note})"
            )
        )
        model = YOLO(str(last) if resume else init.source)

        def on_epoch(trainer):
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
            shown = {
                **losses,
                **{
                    k: v
                    for k, v in (trainer.metrics or {}).items()
                    if "mAP50" in k or "recall" in k
                },
            }
            log(
                f"{task}: epoch {min(trainer.epoch + 1, trainer.epochs)}/{trainer.epochs} "
                + " ".join(f"{k.split('/')[-1]}={float(v):.3f}" for k, v in shown.items())
            )

        model.add_callback("on_fit_epoch_end", on_epoch)
        if resume:
            # ultralytics' callback refuses a reopened run (its `resume` arg changed): log epochs here
            def log_epoch(trainer):
                clean = {
                    k.replace("(", "").replace(")", ""): float(v)
                    for k, v in {
                        **trainer.label_loss_items(trainer.tloss, prefix="train"),
                        **(trainer.metrics or {}),
                    }.items()
                }
                mlflow.log_metrics(clean, step=trainer.epoch)

            model.add_callback("on_fit_epoch_end", log_epoch)
        for event, fn in (callbacks or {}).items():
            model.add_callback(event, fn)
        with _env(MLFLOW_EXPERIMENT_NAME=experiment):
            if resume:
                log(f"{task}: resuming from {last}")
                model.train(resume=True)
            else:
                model.train(
                    data=str(data_yaml),
                    project=str(out_dir),
                    name="train",
                    exist_ok=True,
                    device=device,
                    verbose=False,
                    **args,
                )
        trainer = model.trainer
        save_dir = Path(trainer.save_dir)
        best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
        final = {
            k.replace("(B)", "").replace("metrics/", "val_"): float(v)
            for k, v in (trainer.metrics or {}).items()
        }
        weights_out = out_dir / layout.BEST_WEIGHTS
        tmp = out_dir / ".best.pt.tmp"
        shutil.copyfile(best, tmp)
        os.replace(tmp, weights_out)
        # ultralytics logs weights and plots at the end of training; make sure they are there even
        # if its callback was switched off in the user's ultralytics settings.
        client = MlflowClient()
        logged = {a.path for a in client.list_artifacts(run.info.run_id)}
        if "weights" not in logged:
            mlflow.log_artifact(str(best.parent), artifact_path=None)
        for f in save_dir.glob("*"):
            if f.suffix in {".png", ".jpg", ".csv", ".yaml"} and f.name not in logged:
                mlflow.log_artifact(str(f))
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
        version = None
        if register:
            name = model_name or f"xray-{task}"
            try:
                client.get_registered_model(name)
            except Exception:
                client.create_registered_model(name, description=f"YOLO detector for task {task}")
            mv = client.create_model_version(
                name=name,
                source=f"{run.info.artifact_uri}/weights",
                run_id=run.info.run_id,
                tags={
                    **{
                        k: v
                        for k, v in tags.items()
                        if k in ("dataset_hash", "profile", "task", "trained_on_synthetic")
                    },
                    "init": init.label,
                    "init_sha256": init.sha256 or "",
                },
            )
            version = mv.version
        mlflow.end_run(status="FINISHED")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    finally:
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
    results_csv = save_dir / "results.csv"
    results_png = save_dir / "results.png"
    return TrainResult(
        weights=weights_out,
        run_id=run.info.run_id,
        experiment_id=exp_id,
        model_version=version,
        metrics=final,
        results_csv=results_csv if results_csv.exists() else None,
        results_png=results_png if results_png.exists() else None,
        save_dir=save_dir,
        seconds=time.time() - t0,
        dropped_args=dropped,
    )
