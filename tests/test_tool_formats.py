"""Annotation tools' exports as drops (COCO, YOLO, CVAT for images 1.1 XML, Label Studio JSON),
made by hand per each format's documentation, validated against a small hand-made view of the data.
A drop may box an image already in the data for a finding without boxes there; a box for an
(image, finding) that already has boxes is kept out and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xray_assets.core import inbox, tool_formats

OLD = "00000013_005.png"  # in the data, 1024 x 1024, boxed for Mass, listing Effusion unboxed
OTHER = "00000099_000.png"  # in the data, 2048 x 2048, no boxes
KNOWN = inbox.Known(
    nih={OLD, OTHER},
    boxed={(OLD, "Mass")},
    nih_size=lambda i: {OLD: (1024, 1024), OTHER: (2048, 2048)}.get(i),
)
KEY = b"test-key"


def _drop(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "drop"
    for name, body in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    (folder / inbox.READY).write_text("")
    return folder


def _coco(annotations, width=512, height=512, file_name=f"images/{OLD}"):
    return json.dumps(
        {
            "images": [{"id": 7, "file_name": file_name, "width": width, "height": height}],
            "categories": [{"id": 1, "name": "Pleural effusion"}, {"id": 2, "name": "Mass"}],
            "annotations": annotations,
        }
    )


def test_coco_boxes_an_existing_image_in_its_own_pixels_and_keeps_a_boxed_finding_out(tmp_path):
    """Catches: COCO's [x, y, w, h] read as corners, a box left in the export's (half-size) pixels
    instead of the stored image's, a synonym not mapped, or a second box for an (image, finding)
    that already has boxes accepted over the original."""
    folder = _drop(
        tmp_path,
        {
            "annotations.json": _coco(
                [
                    {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 100, 50]},
                    {"id": 2, "image_id": 7, "category_id": 2, "bbox": [200, 200, 40, 40]},
                ]
            )
        },
    )
    drop = inbox.validate(folder, KNOWN, pseudonym_key=KEY)
    boxes = drop.tables["boxes"]
    assert drop.fmt == "coco" and len(boxes) == 1
    row = boxes.iloc[0]
    assert (row.image_id, row.label) == (OLD, "Effusion")
    assert (row.x_min, row.y_min, row.x_max, row.y_max) == (20, 40, 220, 140), "scaled 512 -> 1024"
    kept_out = drop.tables["kept_out"]
    assert list(kept_out["label"]) == ["Mass"]
    assert kept_out["reason"][0].startswith(f"{OLD} already has Mass boxes"), kept_out["reason"][0]
    assert drop.summary["kept_out"] == 1 and drop.summary["new_images"] == 0


def test_coco_unknown_class_is_rejected_naming_file_and_record(tmp_path):
    """Catches: an unknown class silently dropped or mapped to something."""
    body = json.loads(_coco([{"id": 5, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]}]))
    body["categories"].append({"id": 3, "name": "Aortic enlargement"})
    folder = _drop(tmp_path, {"export.json": json.dumps(body)})
    with pytest.raises(inbox.DropError, match=r"export.json, annotation 5: unknown class 'Aortic"):
        inbox.validate(folder, KNOWN)


def test_yolo_labels_are_denormalised_with_their_class_names(tmp_path):
    """Catches: YOLO's centre-size read as corners or not scaled to the image's pixels; a label
    line that is not five numbers accepted."""
    folder = _drop(
        tmp_path,
        {
            "obj.names": "Nodule\nInfiltration\n",
            "labels/00000099_000.txt": "1 0.5 0.5 0.25 0.125\n",
        },
    )
    boxes = inbox.validate(folder, KNOWN).tables["boxes"]
    assert boxes[["image_id", "label"]].values.tolist() == [[OTHER, "Infiltrate"]]
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[768, 896, 1280, 1152]]
    bad = _drop(
        tmp_path / "bad",
        {"classes.txt": "Nodule\n", "labels/00000099_000.txt": "0 0.5 0.5 0.1\n"},
    )
    with pytest.raises(
        inbox.DropError, match=r"00000099_000.txt line 1: expected `class cx cy w h`"
    ):
        inbox.validate(bad, KNOWN)


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>radiology batch</name></task></meta>
  <image id="0" name="{name}" width="1024" height="1024">
    <box label="Pneumothorax" source="manual" occluded="0" xtl="{x0}" ytl="100.5" xbr="300.25" ybr="400" z_order="0"/>
  </image>
</annotations>
"""


def test_cvat_xml_boxes_and_a_box_outside_the_image_is_rejected(tmp_path):
    """Catches: CVAT's corner boxes misread, or a box past the image's edge accepted (or clipped
    silently instead of named)."""
    folder = _drop(tmp_path, {"annotations.xml": CVAT.format(name=OTHER, x0="50")})
    boxes = inbox.validate(folder, KNOWN).tables["boxes"]
    assert boxes[["x_min", "y_min", "x_max", "y_max"]].values.tolist() == [[100, 201, 600.5, 800]]
    assert boxes["label"].tolist() == ["Pneumothorax"] and boxes["tool"].tolist() == ["cvat"]
    bad = _drop(tmp_path / "bad", {"annotations.xml": CVAT.format(name=OTHER, x0="-40")})
    with pytest.raises(inbox.DropError, match=r"annotations.xml, image .* box 1: box .* outside"):
        inbox.validate(bad, KNOWN)


def _ls_item(rid, x, label="Effusion", score=None):
    item = {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 1024,
        "original_height": 1024,
        "value": {
            "x": x,
            "y": 10.0,
            "width": 20.0,
            "height": 10.0,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }
    if score is not None:
        item["score"] = score
    return item


def label_studio_export(image=OLD, who=None):
    """One task as Label Studio exports it: three pre-annotations (one kept, one moved, one
    removed) and one box the annotator drew."""
    who = who or {"id": 3, "email": "radiologist@example.org"}
    return [
        {
            "id": 41,
            "project": 2,
            "data": {"image": f"/data/local-files/?d=nih/images_001/images/{image}"},
            "predictions": [
                {
                    "model_version": "xray-nih_multi v4",
                    "score": 0.7,
                    "result": [
                        _ls_item("p1", 10.0, score=0.9),
                        _ls_item("p2", 40.0, label="Cardiomegaly", score=0.6),
                        _ls_item("p3", 70.0, label="Atelectasis", score=0.2),
                    ],
                }
            ],
            "annotations": [
                {
                    "id": 9,
                    "completed_by": who,
                    "lead_time": 31.5,
                    "was_cancelled": False,
                    "result": [
                        _ls_item("p1", 10.0, score=0.9),
                        _ls_item("p2", 45.0, label="Cardiomegaly"),
                        _ls_item("new1", 60.0, label="Pneumothorax"),
                    ],
                }
            ],
        }
    ]


def test_label_studio_export_counts_the_four_provenance_kinds_under_a_pseudonym(tmp_path):
    """Catches: an accepted pre-annotation counted as edited (or the reverse), a removed
    pre-annotation lost (it is evidence of a false positive) or kept as a box, or the annotator's
    e-mail or id reaching the drop's tables."""
    folder = _drop(tmp_path, {"export.json": json.dumps(label_studio_export())})
    drop = inbox.validate(folder, KNOWN, pseudonym_key=KEY)
    boxes, deleted = drop.tables["boxes"], drop.tables["deleted"]
    assert dict(zip(boxes["label"], boxes["origin"])) == {
        "Effusion": "accepted",
        "Cardiomegaly": "edited",
        "Pneumothorax": "added",
    }
    assert deleted[["label", "origin"]].values.tolist() == [["Atelectasis", "deleted"]]
    assert drop.summary["pre_annotations_accepted"] == 1
    assert drop.summary["pre_annotations_edited"] == 1 and drop.summary["added"] == 1
    assert drop.summary["pre_annotations_deleted"] == 1
    row = boxes[boxes["label"] == "Effusion"].iloc[0]
    assert (row.x_min, row.x_max, row.score, row.lead_time_s) == (102.4, 307.2, 0.9, 31.5)
    assert row.model_version == "xray-nih_multi v4" and (row.project, row.task) == ("2", "41")
    text = pd.concat([boxes, deleted]).to_csv()
    assert "radiologist@example.org" not in text and set(boxes["annotator"]) == {
        tool_formats.pseudonym(3, KEY)
    }


def test_label_studio_image_not_in_the_data_is_rejected(tmp_path):
    """Catches: boxes for an image nobody has accepted into the data (no patient for the splits)."""
    folder = _drop(
        tmp_path, {"export.json": json.dumps(label_studio_export(image="99999999_000.png"))}
    )
    with pytest.raises(inbox.DropError, match=r"task 41 .*99999999_000.png.* neither in the data"):
        inbox.validate(folder, KNOWN)


def test_synonyms_and_the_ambiguous_united_class():
    """Catches: a tool's spelling of a finding refused, or Mass/Nodule guessed into one NIH class."""
    assert tool_formats.finding("Pleural effusion", "f") == "Effusion"
    assert tool_formats.finding(" infiltration ", "f") == "Infiltrate"
    with pytest.raises(tool_formats.ToolFormatError, match="ambiguous"):
        tool_formats.finding("Nodule/Mass", "f")


ENTRY = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    "00000200_000.png,Mass,0,200,61,F,PA,2500,2048,0.143,0.143,\n"
)


def test_a_new_image_comes_with_its_data_entry_row_and_png(tmp_path):
    """Catches: a new image's box measured against the wrong size (its PNG's header is the truth),
    or its Data_Entry row (its patient) not kept for the label table."""
    import cv2
    import numpy as np

    png = cv2.imencode(".png", np.zeros((300, 200), np.uint8))[1].tobytes()
    body = _coco(
        [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 10, 50, 100]}],
        width=100,
        height=150,
        file_name="00000200_000.png",
    )
    folder = _drop(
        tmp_path,
        {"coco.json": body, "Data_Entry_2017.csv": ENTRY, "images/00000200_000.png": png},
    )
    drop = inbox.validate(folder, KNOWN)
    assert drop.tables["labels"]["patient_id"].tolist() == [200]
    assert list(drop.images) == ["00000200_000.png"] and drop.summary["new_images"] == 1
    box = drop.tables["boxes"][["x_min", "y_min", "x_max", "y_max"]].values.tolist()
    assert box == [[20, 20, 120, 220]], "the export's 100 x 150 scaled to the PNG's 200 x 300"


def test_a_new_image_needs_its_data_entry_row_and_png(tmp_path):
    """Catches: a drop adding an image without its patient (splits group by patient)."""
    new = "00000200_000.png"
    folder = _drop(
        tmp_path,
        {
            "annotations.json": _coco(
                [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 1, 9, 9]}], file_name=new
            )
        },
    )
    with pytest.raises(
        inbox.DropError, match=r"00000200_000.png.* neither in the data nor in the drop"
    ):
        inbox.validate(folder, KNOWN)


def test_a_coco_drop_boxes_a_label_only_image_of_the_data_through_the_assets(data_copy, tmp_path):
    """End to end through the assets: a COCO export boxing an image that lists Atelectasis without
    a box is committed as a drop and the next `nih_boxes` has the box (source: the drop), while the
    raw CSVs stay byte-identical. Catches: a drop for an image already in the data rejected (the
    old rule), or its box not reaching the label table."""
    import dagster as dg

    from xray_assets.core import bounds
    from xray_assets.defs import drops, nih
    from xray_assets.defs.resources import XrayResource

    xray = XrayResource(
        data_dir=str(data_copy),
        storage_dir=str(tmp_path / "storage"),
        profile="smoke",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    raw = {p: p.read_bytes() for p in sorted((data_copy / "nih").glob("*.csv"))}
    image = "00000001_000.png"  # the sample lists Atelectasis for it, with no box
    png = next((data_copy / "nih").rglob(image))
    dims = bounds.png_dimensions(png.read_bytes()[:64])
    width, height = dims.width, dims.height
    body = {
        "images": [{"id": 1, "file_name": image, "width": width, "height": height}],
        "categories": [{"id": 1, "name": "atelectasis"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40]}],
    }
    folder = _drop(xray.inbox, {"coco.json": json.dumps(body)})
    key = inbox.partition_key(folder.name, inbox.drop_digest(folder))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("annotation_drops", [key])
        context = dg.build_asset_context(
            resources={"xray": xray}, partition_key=key, instance=instance
        )
        result = drops.annotation_drops(context, config=drops.DropConfig())
        assert result.metadata["format"] == "coco"
        # one figure for the images the drop annotates, the same as its summary's (was 0 vs 1)
        summary = result.metadata["summary"].value.records[0].data
        assert result.metadata["images"] == summary["images"] == 1
        assert result.metadata["new_images"] == summary["new_images"] == 0
        nih.nih_boxes(dg.build_asset_context(resources={"xray": xray}))
    boxes = xray.storage.read_parquet("nih", "boxes.parquet")
    mine = boxes[boxes["source"] == key]
    assert mine[["image_id", "label", "x_min", "y_max"]].values.tolist() == [
        [image, "Atelectasis", 10.0, 50.0]
    ]
    assert raw == {p: p.read_bytes() for p in raw}, "the raw CSVs are never written"


def test_batch_exports_read_back_as_the_boxes_they_were_given(tmp_path):
    """Our COCO and CVAT exports of a batch, read as drops, give the batch's boxes in the image's
    pixels. Catches: COCO's bbox written as corners, or CVAT's corners written as sizes."""
    from xray_assets.core import batch_export
    from xray_assets.core.classes import TASKS

    batch = pd.DataFrame(
        {
            "image_id": [OTHER],
            "width": [2048],
            "height": [2048],
            "listed": [["Effusion"]],
            "rank": [1],
            "score": [0.7],
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": [OTHER, OTHER],
            "label": ["Effusion", "Mass"],
            "score": [0.9, 0.4],
            "x_min": [100.0, 1500.0],
            "y_min": [200.0, 50.0],
            "x_max": [300.0, 1900.0],
            "y_max": [400.0, 650.0],
        }
    )
    task = TASKS["nih_multi"]
    (tmp_path / "coco.json").write_text(batch_export.coco(batch, boxes, task))
    (tmp_path / "cvat.xml").write_text(batch_export.cvat(batch, boxes, task))
    cols = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]
    for back in (
        tool_formats.read_coco(tmp_path / "coco.json", KNOWN.nih_size),
        tool_formats.read_cvat(tmp_path / "cvat.xml", KNOWN.nih_size),
    ):
        assert back[cols].values.tolist() == boxes[cols].values.tolist()


def test_an_accepted_or_edited_box_of_a_finding_boxed_meanwhile_is_reported_per_box(tmp_path):
    """Catches: an accepted or edited pre-annotation kept out silently (counted as accepted 0,
    edited 0), or its reason not naming the image, the finding, its origin and the existing boxes'
    source."""
    known = inbox.Known(
        nih={OLD},
        boxed={(OLD, "Effusion"): "drop other-123", (OLD, "Cardiomegaly"): "BBox_List_2017.csv"},
        nih_size=KNOWN.nih_size,
    )
    folder = _drop(tmp_path, {"export.json": json.dumps(label_studio_export())})
    drop = inbox.validate(folder, known, pseudonym_key=KEY)
    kept = drop.tables["kept_out"].set_index("label")
    assert set(kept.index) == {"Effusion", "Cardiomegaly"}
    assert kept.at["Effusion", "reason"] == (
        f"{OLD} already has Effusion boxes (from drop other-123); this accepted box is kept out "
        "and the existing boxes stand"
    )
    assert "edited box" in kept.at["Cardiomegaly", "reason"]
    assert "BBox_List_2017.csv" in kept.at["Cardiomegaly", "reason"]
    s = drop.summary
    assert (s["pre_annotations_accepted"], s["pre_annotations_edited"], s["added"]) == (1, 1, 1)
    assert (s["kept_out_accepted"], s["kept_out_edited"], s["kept_out"]) == (1, 1, 2)
    assert s["images"] == 1 and s["new_images"] == 0


def test_a_batch_never_proposes_a_finding_the_image_already_has_boxes_of():
    """Catches: a pre-annotation exported for an (image, finding) that has boxes (the drop keeps it
    out, and the radiologist's work on it is lost), the boxed findings missing from the task, or
    the acquisition score shown as the model's confidence (Label Studio's "129.02%")."""
    from xray_assets.core import batch_export
    from xray_assets.core.classes import TASKS

    task = TASKS["nih_multi"]
    dets = pd.DataFrame(
        {
            "image_id": ["a.png", "a.png", "a.png", "b.png"],
            "label": ["Mass", "Nodule", "Effusion", "Mass"],
            "score": [0.9, 0.4, 0.3, 0.8],
            "x_min": 10.0,
            "y_min": 10.0,
            "x_max": 50.0,
            "y_max": 60.0,
        }
    )
    boxed = batch_export.boxed_findings(
        pd.DataFrame({"image_id": ["a.png", "c.png"], "label": ["Mass", "Mass"]}),
        ["a.png", "b.png"],
    )
    assert boxed == {"a.png": ["Mass"]}
    listed = {"a.png": ["Nodule"], "b.png": ["Mass"]}
    got = batch_export.pre_annotations(dets, task, listed, boxed)
    assert sorted(zip(got["image_id"], got["label"])) == [
        ("a.png", "Effusion"),
        ("a.png", "Nodule"),
        ("b.png", "Mass"),
    ]
    batch = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png"],
            "width": 100,
            "height": 100,
            "listed": [["Nodule"], ["Mass"]],
            "boxed": [["Mass"], []],
            "rank": [1, 2],
            "score": [1.2902, 0.7],
        }
    )
    tasks = batch_export.label_studio_tasks(batch, got, "m v1", lambda i: f"/x/{i}")
    assert [t["data"]["boxed"] for t in tasks] == ["Mass", "none"]
    assert [t["data"]["acquisition_score"] for t in tasks] == [1.2902, 0.7]
    assert [t["predictions"][0]["score"] for t in tasks] == [0.4, 0.8], "the model's confidence"
    assert "$boxed" in batch_export.label_config(task)
