"""Every place the project reaches into another library's internals, in one module.

Each function below depends on a name or a shape that the library does not promise to keep: a
module attribute replaced, a private flag cleared, a method called with a stand-in `self`, a
subclass overriding a hook. `tests/test_compat.py` has one test per entry that fails when the
installed library changes that name or shape (checked against ultralytics 8.4, openvino-telemetry
2025, MLflow 3), so an upgrade breaks a named test instead of a training run.

- `use_local_amp_check`: ultralytics' AMP check downloads a model; ours is local (`offline`).
- `decline_openvino_telemetry`: OpenVINO's telemetry asks for consent and sends on export.
- `mlflow_callback_always_logs`: ultralytics' MLflow callback is silent under pytest.
- `match_predictions`, `ValidatorMetrics`: ultralytics' validator's matching and `DetMetrics`,
  driven from outside a validator (the tuning objective, exactly as its validator scores).
- `capturing_predictor`: ultralytics' predictor with its `postprocess` hook extended (the tuning
  pass keeps every candidate above a floor before NMS).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import numpy as np

#: ultralytics' validator's IoU thresholds (0.50:0.95)
IOU_THRESHOLDS = 10


def use_local_amp_check(check: Callable) -> None:
    """Replace ultralytics' `check_amp` where the trainer looks it up (its own module's name for it)."""
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.checks as checks_mod

    trainer_mod.check_amp = check
    checks_mod.check_amp = check


def decline_openvino_telemetry() -> None:
    """Decline OpenVINO's telemetry in this process (and the children it would start to send it).
    Call before `import openvino`: the import itself sends an event (openvino.tools.ovc)."""
    try:
        from openvino_telemetry.backend import backend_ga, backend_ga4
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    opt_in_checker.OptInChecker.check = lambda self, *a, **k: (
        opt_in_checker.ConsentCheckResult.DECLINED
    )
    for backend in (backend_ga.GABackend, backend_ga4.GA4Backend):
        backend.send = lambda self, *a, **k: None


def mlflow_callback_always_logs() -> None:
    """ultralytics' MLflow callback stays silent under pytest unless the test's name says mlflow;
    our run is explicit, so the callback must log into it wherever it runs."""
    from ultralytics.utils.callbacks import mlflow as cb

    cb.TESTS_RUNNING = False


def match_predictions(pred_cls, true_cls, iou):
    """ultralytics' validator's greedy matching (tp per prediction per IoU threshold), called
    without a validator: the method reads only `self.iouv`."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator

    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, IOU_THRESHOLDS))
    return DetectionValidator.match_predictions(
        matcher, torch.as_tensor(pred_cls), torch.as_tensor(true_cls), iou
    ).numpy()


class ValidatorMetrics:
    """ultralytics' `DetMetrics` fed one image at a time, as its validator feeds it."""

    def __init__(self, classes):
        from ultralytics.utils.metrics import DetMetrics

        self.metrics = DetMetrics(names=dict(enumerate(classes)))

    def add(self, tp, conf, pred_cls, true_cls, name: str) -> None:
        self.metrics.update_stats(
            {
                "tp": tp,
                "conf": conf,
                "pred_cls": pred_cls,
                "target_cls": true_cls,
                "target_img": np.unique(true_cls),
                "im_name": name,
            }
        )

    def results(self) -> dict[str, float]:
        self.metrics.process(plot=False)
        r = self.metrics.results_dict
        return {
            "precision": float(r["metrics/precision(B)"]),
            "recall": float(r["metrics/recall(B)"]),
            "map50": float(r["metrics/mAP50(B)"]),
            "map50_95": float(r["metrics/mAP50-95(B)"]),
        }


def capturing_predictor(sink: list, floor: float):
    """ultralytics' detection predictor that also appends, per image, every raw candidate above
    `floor` ((4 + nc, n), input (h, w), original (h, w)) to `sink` before its own NMS runs."""
    from ultralytics.models.yolo.detect import DetectionPredictor

    class CapturingPredictor(DetectionPredictor):
        def postprocess(self, preds, img, orig_imgs, **kwargs):
            p = preds[0] if isinstance(preds, (list, tuple)) else preds
            above = p[:, 4:].amax(1) > floor
            for b in range(p.shape[0]):
                orig = (
                    orig_imgs[b] if isinstance(orig_imgs, list) else orig_imgs[b].permute(1, 2, 0)
                )
                sink.append(
                    (
                        p[b][:, above[b]].detach().float().cpu(),
                        tuple(img.shape[2:]),
                        tuple(orig.shape[:2]),
                    )
                )
            return super().postprocess(preds, img, orig_imgs, **kwargs)

    return CapturingPredictor
