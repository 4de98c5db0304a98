"""One test per entry of `xray_assets/core/compat.py`: each fails when the installed library changes the
name or the shape that entry relies on (an upgrade then breaks here, by name, not mid-training)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from xray_assets.core import compat


def test_local_amp_check_replaces_the_name_the_trainer_calls():
    """Catches: ultralytics renaming `check_amp` or the trainer no longer reading it from its own
    module (our local check would then be skipped and ultralytics' downloading one would run)."""
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.checks as checks_mod

    assert "check_amp" in inspect.getsource(trainer_mod.BaseTrainer._setup_train)
    original = checks_mod.check_amp, trainer_mod.check_amp

    def mine(model):
        return False

    try:
        compat.use_local_amp_check(mine)
        assert trainer_mod.check_amp is mine and checks_mod.check_amp is mine
    finally:
        checks_mod.check_amp, trainer_mod.check_amp = original
    assert list(inspect.signature(original[0]).parameters)[0] == "model"


def test_openvino_telemetry_is_declined_and_sends_nothing():
    """Catches: openvino-telemetry moving its consent check or its senders (telemetry would then
    ask for consent or reach its host on export)."""
    pytest.importorskip("openvino_telemetry")
    from openvino_telemetry.backend import backend_ga, backend_ga4
    from openvino_telemetry.utils import opt_in_checker

    compat.decline_openvino_telemetry()
    assert opt_in_checker.OptInChecker().check() == opt_in_checker.ConsentCheckResult.DECLINED
    for backend in (backend_ga.GABackend, backend_ga4.GA4Backend):
        assert backend.send(object(), "message") is None


def test_mlflow_callback_flag_exists_and_gates_logging():
    """Catches: ultralytics renaming the flag that silences its MLflow callback under pytest (our
    runs would then miss ultralytics' per-epoch metrics when trained from the tests)."""
    from ultralytics.utils.callbacks import mlflow as cb

    assert "TESTS_RUNNING" in inspect.getsource(cb)
    compat.mlflow_callback_always_logs()
    assert cb.TESTS_RUNNING is False


def test_validator_matching_called_from_outside_a_validator():
    """Catches: ultralytics' `match_predictions` reading more of `self` than `iouv`, or changing
    its output (predictions x 10 IoU thresholds)."""
    import torch

    iou = torch.tensor([[0.72, 0.2], [0.1, 0.55]])  # truths x predictions
    tp = compat.match_predictions(np.array([0.0, 1.0]), np.array([0.0, 1.0]), iou)
    assert tp.shape == (2, compat.IOU_THRESHOLDS)
    assert tp[0].tolist() == [True] * 5 + [False] * 5  # 0.72: matched at 0.50 ... 0.70
    assert tp[1].tolist() == [True, True] + [False] * 8  # 0.55: matched at 0.50 and 0.55
    wrong_class = compat.match_predictions(np.array([1.0]), np.array([0.0]), iou[:1, :1])
    assert not wrong_class.any()


def test_det_metrics_fed_one_image_at_a_time_report_the_validators_keys():
    """Catches: `DetMetrics.update_stats`'s keys or `results_dict`'s names changing (the tuning
    objective would read nothing or fail)."""
    metrics = compat.ValidatorMetrics(["Cardiomegaly"])
    tp = np.ones((1, compat.IOU_THRESHOLDS), bool)
    metrics.add(tp, np.array([0.9]), np.array([0.0]), np.array([0.0]), "a")
    metrics.add(
        np.zeros((1, compat.IOU_THRESHOLDS), bool),
        np.array([0.8]),
        np.array([0.0]),
        np.zeros(0),
        "b",
    )
    r = metrics.results()
    assert set(r) == {"precision", "recall", "map50", "map50_95"}
    assert r["recall"] == pytest.approx(1.0) and r["map50"] == pytest.approx(0.995, abs=0.01)


def test_capturing_predictor_overrides_the_hook_predict_calls():
    """Catches: ultralytics renaming `postprocess` or changing its arguments (the tuning pass would
    keep no candidates)."""
    from ultralytics.models.yolo.detect import DetectionPredictor

    params = list(inspect.signature(DetectionPredictor.postprocess).parameters)
    assert params[:4] == ["self", "preds", "img", "orig_imgs"]
    cls = compat.capturing_predictor([], 0.01)
    assert (
        issubclass(cls, DetectionPredictor)
        and cls.postprocess is not DetectionPredictor.postprocess
    )
