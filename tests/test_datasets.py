"""Issue 4's data rules: patient-disjoint, stable splits; YOLO labels that draw back onto the boxes."""

import numpy as np
import pandas as pd

from xray_assets.core.classes import TASKS
from xray_assets.core.labels import read_nih_boxes, read_nih_labels
from xray_assets.core.sampling import sample_background
from xray_assets.core.splits import assign_splits
from xray_assets.core.yolo_dataset import build_dataset, dataset_checks, read_yolo_label


def _real_box_images(real_data):
    boxes = read_nih_boxes(real_data / "nih" / "BBox_List_2017.csv")
    labels = read_nih_labels(real_data / "nih" / "Data_Entry_2017_subset_reconstructed.csv")
    images = pd.DataFrame({"image_id": boxes["image_id"].unique()})
    pid = images["image_id"].map(labels.set_index("image_id")["patient_id"])
    images["group"] = "nih:" + pid.fillna(images["image_id"].str[:8].astype(int)).astype(
        int
    ).astype(str)
    return boxes, images


def test_real_box_images_split_by_patient(real_data):
    boxes, images = _real_box_images(real_data)
    assert len(images) == 880
    images["split"] = assign_splits(images["group"], seed=0).to_numpy()
    assert (images.groupby("group")["split"].nunique() == 1).all()
    per_patient = images.drop_duplicates("group")["split"].value_counts(normalize=True)
    assert abs(per_patient["train"] - 0.8) < 0.05 and abs(per_patient["val"] - 0.1) < 0.05
    assert abs(per_patient["test"] - 0.1) < 0.05


def test_real_nih_box_round_trips_through_a_yolo_label(real_data, tmp_path):
    boxes, images = _real_box_images(real_data)
    images["split"] = assign_splits(images["group"], seed=0).to_numpy()
    images["width"] = images["height"] = 1024
    images["path"] = str(
        real_data / "nih" / "bbox_images" / "00000032_037.png"
    )  # any file: links only
    task = TASKS["nih_multi"]
    built = build_dataset(tmp_path / "ds", task, images, boxes)
    checks = dataset_checks(images, built["boxes"], task.classes)
    assert checks["no_patient_in_two_splits"][0] and checks["boxes_inside_images"][0]
    worst = 0.0
    for r in images.head(200).itertuples():
        got = read_yolo_label(
            tmp_path / "ds" / "labels" / r.split / r.image_id.replace(".png", ".txt"), 1024, 1024
        )
        want = boxes[boxes.image_id == r.image_id]
        want = want.assign(c=want["label"].map(task.class_index()))
        for _, w in want.iterrows():
            match = got[got[:, 0] == w.c]
            d = (
                np.abs(match[:, 1:] - w[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float))
                .max(axis=1)
                .min()
            )
            worst = max(worst, d)
    assert worst <= 1.0, worst


def test_new_annotation_batch_never_moves_old_patients():
    old = pd.DataFrame({"image_id": [f"{p:08d}_000.png" for p in range(1, 400)]})
    old["group"] = "nih:" + old["image_id"].str[:8].astype(int).astype(str)
    old["split"] = assign_splits(old["group"]).to_numpy()
    follow_up = pd.DataFrame({"image_id": ["00000007_001.png"], "group": ["nih:7"]})
    newcomers = pd.DataFrame({"image_id": [f"{p:08d}_000.png" for p in range(400, 480)]})
    newcomers["group"] = "nih:" + newcomers["image_id"].str[:8].astype(int).astype(str)
    grown = pd.concat([old[["image_id", "group"]], follow_up, newcomers], ignore_index=True)
    grown["split"] = assign_splits(grown["group"]).to_numpy()
    merged = old.merge(grown, on="image_id", suffixes=("_old", "_new"))
    assert (merged["split_old"] == merged["split_new"]).all()
    assert (
        grown.set_index("image_id").loc["00000007_001.png", "split"]
        == old.set_index("image_id").loc["00000007_000.png", "split"]
    )

    # backgrounds: earlier picks stay picked when more annotations (a larger n) and new candidates arrive
    cands = pd.DataFrame({"image_id": [f"{p:08d}_009.png" for p in range(2000)]})
    first = sample_background(cands, 100, seed=0)
    more = pd.concat(
        [cands, pd.DataFrame({"image_id": [f"{p:08d}_009.png" for p in range(2000, 2600)]})]
    )
    second = sample_background(more, 120, seed=0, previous=first)
    assert set(first.image_id) <= set(second.image_id) and len(second) == 120
