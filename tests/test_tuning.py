"""One detection rule from tuning to serving: a grid point is exactly `predict` at that pair, and it is
scored exactly as ultralytics' validator scores detections."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TOY_SIZE as SIZE

from xray_assets.core.classes import TASKS
from xray_assets.core.detection import (
    DetectionRule,
    capture_candidates,
    detect_images,
    load_model,
    replay,
)
from xray_assets.core.tuning import best_pair, choose_rule, tune_grid, ultralytics_scores

CLASSES = list(TASKS["nih_multi"].classes)
#: the study profile's own rule (its validation conf and IoU): the fallback and the tie-break
STUDY = (0.03, 0.8)
XY = ["x_min", "y_min", "x_max", "y_max"]


def _images(data_yaml: Path, split: str) -> pd.DataFrame:
    paths = Path(data_yaml.parent / f"{split}.txt").read_text().split()
    return pd.DataFrame({"image_id": [Path(p).name for p in paths], "path": paths})


@pytest.mark.slow
def test_every_grid_point_is_predicts_own_boxes_at_that_pair(toy_model, sample_dir):
    weights, data = toy_model
    images = _images(data, "val")
    # a non-square image too: the letterbox pads it (the web app's uploads come in every shape)
    dicom_png = sample_dir / "nonsquare.png"
    import cv2

    from xray_assets.core.dicom import read_dicom_image

    cv2.imwrite(
        str(dicom_png),
        read_dicom_image(sorted((sample_dir / "vinbigdata" / "train").glob("*.dicom"))[0]),
    )
    images = pd.concat(
        [images, pd.DataFrame({"image_id": ["nonsquare.png"], "path": [str(dicom_png)]})]
    )
    model = load_model(weights)
    cands = capture_candidates(model, images, SIZE, floor=0.01)
    compared = 0
    for conf, iou, agnostic in [
        (0.01, 0.3, False),
        (0.01, 0.8, True),
        (0.1, 0.6, False),
        (0.3, 0.5, True),
    ]:
        rule = DetectionRule(conf, iou, agnostic)
        replayed = replay(cands, rule, CLASSES).reset_index(drop=True)
        predicted = detect_images(model, images, rule, SIZE, CLASSES).reset_index(drop=True)
        assert len(replayed) == len(predicted), (conf, iou, agnostic)
        assert (replayed["label"] == predicted["label"]).all() and (
            replayed["image_id"] == predicted["image_id"]
        ).all()
        assert np.allclose(replayed["score"], predicted["score"], atol=1e-6)
        assert np.allclose(replayed[XY], predicted[XY], atol=1e-3)
        compared += len(predicted)
    assert compared > 50, "the comparison needs boxes"


@pytest.mark.slow
def test_scores_equal_ultralytics_validator_on_its_own_detections(toy_model):
    """Feed the scorer what model.val detected and the labels it prepared: the same four numbers."""
    from ultralytics.models.yolo.detect import DetectionValidator

    from xray_assets.core.tuning import val_args

    weights, data = toy_model
    got: dict = {}

    class Capture(DetectionValidator):
        def update_metrics(self, preds, batch):
            for si, pred in enumerate(preds):
                pb, pn = self._prepare_batch(si, batch), self._prepare_pred(pred)
                name = Path(pb["im_file"]).name
                got["ids"].append(name)
                got["p"] += [
                    (name, CLASSES[int(c)], *b, s)
                    for b, s, c in zip(
                        pn["bboxes"].tolist(), pn["conf"].tolist(), pn["cls"].tolist()
                    )
                ]
                got["t"] += [
                    (name, CLASSES[int(c)], *b)
                    for b, c in zip(pb["bboxes"].tolist(), pb["cls"].tolist())
                ]
            super().update_metrics(preds, batch)

    model = load_model(weights)
    for conf, iou in [(0.01, 0.6), (0.2, 0.5)]:
        got.update(ids=[], p=[], t=[])
        ref = model.val(
            validator=Capture, data=str(data), conf=conf, iou=iou, **val_args(SIZE, 4)
        ).results_dict
        dets = pd.DataFrame(got["p"], columns=["image_id", "label", *XY, "score"])
        gt = pd.DataFrame(got["t"], columns=["image_id", "label", *XY])
        mine = ultralytics_scores(dets, gt, got["ids"], CLASSES)
        assert len(dets) and len(gt)
        for key, col in [
            ("metrics/precision(B)", "precision"),
            ("metrics/recall(B)", "recall"),
            ("metrics/mAP50(B)", "map50"),
            ("metrics/mAP50-95(B)", "map50_95"),
        ]:
            assert mine[col] == pytest.approx(ref[key], abs=1e-6), (conf, iou, col)


@pytest.mark.slow
def test_grid_picks_the_best_objective(toy_model):
    weights, data = toy_model
    images = _images(data, "val")
    from xray_assets.core.yolo_dataset import read_yolo_label

    truth = []
    for p in images["path"]:
        label = Path(p.replace("/images/", "/labels/")).with_suffix(".txt")
        for c, *xy in read_yolo_label(label, SIZE, SIZE).tolist():
            truth.append((Path(p).name, CLASSES[int(c)], *xy))
    gt = pd.DataFrame(truth, columns=["image_id", "label", *XY])
    cands = capture_candidates(load_model(weights), images, SIZE, floor=0.01)
    grid, info = tune_grid(
        cands,
        gt,
        CLASSES,
        DetectionRule(0.01, 0.8),
        (0.01, 0.1, 0.3),
        (0.3, 0.6, 0.8),
        log=lambda m: None,
    )
    assert info["images"] == len(images) and info["candidates"] > 0
    assert grid["map50"].max() > 0.2 and grid["map50"].nunique() > 2, "grid points must differ"
    best = best_pair(grid, STUDY)
    assert best["objective"] == grid["objective"].max()
    assert best["objective"] == pytest.approx((best["recall"] + best["map50"]) / 2)


def test_replay_of_exactly_six_candidates_is_not_read_as_end_to_end_output():
    """ultralytics takes a (1, 4 + nc, 6) tensor for an end-to-end model's (1, boxes, 6) output."""
    import torch

    from xray_assets.core.detection import Candidates

    raw = torch.zeros(4 + 8, 6)
    for k in range(6):  # six candidates, far apart, class k, score 0.5 + k/20
        raw[:4, k] = torch.tensor([20.0 + 40 * k, 20.0, 10.0, 10.0])
        raw[4 + k, k] = 0.5 + k / 20
    boxes = replay([Candidates("i", raw, (64, 256), (64, 256))], DetectionRule(0.1, 0.5), CLASSES)
    assert len(boxes) == 6 and sorted(boxes["label"]) == sorted(CLASSES[:6])
    assert boxes["score"].max() == pytest.approx(0.75)


def _grid(objectives, boxes=5):
    """A study-sized grid with the given objective at each point (row-major: conf, then iou)."""
    from xray_assets.config import STUDY_CONF_GRID, STUDY_IOU_GRID

    rows = [(c, i) for c in STUDY_CONF_GRID for i in STUDY_IOU_GRID]
    obj = list(objectives) if not np.isscalar(objectives) else [objectives] * len(rows)
    return pd.DataFrame(
        {
            "conf": [c for c, _ in rows],
            "iou": [i for _, i in rows],
            "precision": 0.0,
            "recall": obj,
            "map50": obj,
            "map50_95": 0.0,
            "objective": obj,
            "boxes": boxes,
        }
    )


def test_a_model_that_proposes_nothing_on_val_gets_the_studys_rule_and_says_so():
    """The demo's united_mass_nodule: 0 candidates for 19 val boxes, every point 0; the old rule
    kept the corner conf 0.6 / IoU 0.1, which found nothing on test."""
    best, why = choose_rule(_grid(0.0, boxes=0), 19, 0, STUDY)
    assert (best["conf"], best["iou"]) == STUDY
    assert why == "the model proposes no box on val above conf 0.03 (19 val boxes)"


def test_a_val_split_without_boxes_gets_the_studys_rule_and_says_so():
    best, why = choose_rule(_grid(0.0), 0, 120, STUDY)
    assert (best["conf"], best["iou"]) == STUDY and why == "the val split has no box of this task"


def test_a_grid_where_every_point_ties_gets_the_studys_rule():
    best, why = choose_rule(_grid(0.25), 10, 40, STUDY)
    assert (best["conf"], best["iou"]) == STUDY and why.startswith("every grid point scores")


def test_where_the_grid_resolves_the_best_wins_and_ties_break_toward_the_studys_rule():
    grid = _grid(0.1)
    grid.loc[(grid["conf"] == 0.5) & (grid["iou"] == 0.3), "objective"] = 0.4
    best, why = choose_rule(grid, 10, 40, STUDY)
    assert (best["conf"], best["iou"], why) == (0.5, 0.3, "")
    # two points share the best objective: the one nearer (0.03, 0.8) wins, not a corner
    grid.loc[(grid["conf"] == 0.1) & (grid["iou"] == 0.6), "objective"] = 0.4
    grid.loc[(grid["conf"] == 0.6) & (grid["iou"] == 0.1), "objective"] = 0.4
    best, why = choose_rule(grid, 10, 40, STUDY)
    assert (best["conf"], best["iou"], why) == (0.1, 0.6, "")


def test_a_fallback_rule_travels_with_the_rule_and_does_not_change_what_it_detects():
    rule = DetectionRule(0.03, 0.8, fallback="the val split has no box of this task")
    assert rule == DetectionRule(0.03, 0.8), "a note, not a different rule"
    assert DetectionRule.from_dict(rule.as_dict()).fallback == rule.fallback
    assert DetectionRule.from_tags(rule.tags()).fallback == rule.fallback
    assert "fallback: the val split" in rule.describe()
    assert "fallback" not in DetectionRule(0.03, 0.8).as_dict(), "a tuned rule's file is unchanged"
    assert DetectionRule.from_tags(DetectionRule(0.2, 0.5).tags()).fallback == ""
