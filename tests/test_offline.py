"""Nothing reaches the network: a training and a web-app request make no look-up and no connection
outside loopback; the guard sees what a library swallows (a missing font is asked of GitHub)."""

import os
from pathlib import Path

import netguard
import numpy as np
import pytest


def test_offline_settings_hold_where_ultralytics_reads_them():
    from xray_assets.core import offline

    offline.prepare()
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils as uu
    import ultralytics.utils.checks as checks_mod

    assert uu.ONLINE is False and uu.AUTOINSTALL is False, (
        "read at ultralytics' import: set before it"
    )
    assert Path(uu.USER_CONFIG_DIR) == offline.font_dir()
    assert all((offline.font_dir() / f).stat().st_size > 100_000 for f in offline.FONTS)
    assert (
        trainer_mod.check_amp is offline.local_amp_check
        and checks_mod.check_amp is offline.local_amp_check
    )
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert uu.SETTINGS["runs_dir"].startswith(os.environ["YOLO_CONFIG_DIR"]), (
        "no ./runs in the working directory"
    )


def test_guard_records_a_lookup_that_ultralytics_swallows(tmp_path):
    """Without the font copy, ultralytics' check_font asks GitHub and catches the failure."""
    from ultralytics.utils.checks import check_font

    from xray_assets.core import offline

    saved = {f: (offline.font_dir() / f).read_bytes() for f in offline.FONTS}
    try:
        for f in offline.FONTS:
            (offline.font_dir() / f).unlink()
        uncached = (
            check_font.__wrapped__
        )  # (lru-cached: an earlier call in the session would answer from memory)
        uncached.cache_clear()
        with netguard.expected() as got:
            assert check_font("Arial.ttf") is None, "no exception: ultralytics swallows the failure"
        assert [(r["kind"], r["target"]) for r in got] == [("dns", "github.com")]
    finally:
        for f, data in saved.items():
            (offline.font_dir() / f).write_bytes(data)
        check_font.__wrapped__.cache_clear()


@pytest.mark.slow
def test_training_and_a_web_request_make_no_network_attempt(tmp_path):
    """A smoke training (with ultralytics' plots, which draw text) and a request to the web app; the
    recording guard must see nothing. Remove the font copy from `offline.prepare` and this fails."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from xray_assets import train as core_train
    from xray_assets.config import get_profile
    from xray_assets.core.detection import DetectionRule
    from xray_assets.core.synthetic import render, toy_yolo_dataset
    from xray_assets.serve.app import create_app
    from xray_assets.serve.models import ServedModel
    from xray_assets.tracking import TrainingRun

    position = netguard.mark()
    data = toy_yolo_dataset(
        tmp_path, "united_cardiomegaly", 12, 128, [[], ["Cardiomegaly"]], (8 / 12, 10 / 12)
    )
    params = replace(get_profile("smoke").train, epochs=1, plots=True)
    result = core_train.train(
        core_train.TrainRequest(
            task="united_cardiomegaly",
            data_yaml=data,
            params=params,
            out_dir=tmp_path / "models",
            init=core_train.Init("scratch", params.model),
        ),
        TrainingRun(f"sqlite:///{tmp_path / 'mlflow.db'}", "offline", tmp_path / "art"),
        log=lambda m: None,
    )
    model = ServedModel(
        task="united_cardiomegaly",
        version="1",
        chosen="test",
        rule=DetectionRule(0.01, 0.5),
        imgsz=128,
        classes=["Cardiomegaly"],
        weights=result.weights,
        backend="pytorch",
    ).load()
    img, _ = render(np.random.default_rng(0), ["Cardiomegaly"], 256, 256)
    import cv2

    png = cv2.imencode(".png", (img * 255).astype(np.uint8))[1].tobytes()
    r = TestClient(create_app([model])).post(
        "/api/detect", files={"file": ("x.png", png, "image/png")}
    )
    assert r.status_code == 200 and r.json()["models"][0]["task"] == "united_cardiomegaly"
    found = netguard.since(position)
    assert found == [], netguard.describe(found)
