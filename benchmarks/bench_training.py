"""The pipeline's training step (core.train: MLflow run, callback logging, artefacts, registry)
against calling ultralytics' `train` directly on the same dataset and settings, in the same run."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> list[dict]:
    from xray_assets import tracking
    from xray_assets import train as core_train
    from xray_assets.config import configure_ultralytics, get_profile
    from xray_assets.core.synthetic import toy_yolo_dataset

    configure_ultralytics()
    params = replace(
        get_profile("demo").train, epochs=6, imgsz=160, workers=0, extra={"nbs": 8, "val": False}
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = toy_yolo_dataset(
            tmp, "united_cardiomegaly", 64, 256, [[], ["Cardiomegaly"]], (0.8, 1.0)
        )
        # the store's one-time creation (schema migrations) is not a per-training cost
        tracking.experiment(f"sqlite:///{tmp / 'mlflow.db'}", "bench", tmp / "artifacts")
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS

        args, _ = core_train.ultralytics_train_args(params)
        SETTINGS.update({"mlflow": False})

        def direct(i: int) -> float:
            SETTINGS.update({"mlflow": False})
            t = time.perf_counter()
            YOLO(params.model).train(
                data=str(data),
                project=str(tmp / "direct"),
                name=f"train{i}",
                exist_ok=True,
                verbose=False,
                plots=True,
                **{**args, "epochs": args["epochs"] if i else 1},
            )
            return time.perf_counter() - t

        def pipeline(i: int) -> float:
            t = time.perf_counter()
            core_train.train(
                core_train.TrainRequest(
                    task="united_cardiomegaly",
                    data_yaml=data,
                    params=params,
                    out_dir=tmp / f"pipeline{i}",
                    init=core_train.Init("scratch", params.model),
                ),
                tracking.TrainingRun(
                    f"sqlite:///{tmp / 'mlflow.db'}",
                    "bench",
                    tmp / "artifacts",
                    params={"task": "bench"},
                    tags={"task": "bench"},
                ),
                log=lambda m: None,
            )
            return time.perf_counter() - t

        direct(0)  # warm-up: first model build, lazy imports
        runs = [(direct(i), pipeline(i)) for i in (1, 2)]
        base, ours = min(r[0] for r in runs), min(r[1] for r in runs)
    return [
        {
            "benchmark": "training step overhead",
            "ours_s": ours,
            "baseline_s": base,
            "speedup": base / ours,
            "baseline": "YOLO.train directly, same data and args, best of 2 (ratio >= 0.91 = within 10%)",
        }
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(r)
