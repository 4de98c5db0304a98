"""Fast asset tests: every asset of the graph called directly, as Dagster's own projects test theirs
(`dg.build_asset_context`, the partition key where partitioned, the resource on `tmp_path`), with
its result and its metadata checked. The assets run in graph order on the session's small sample
data and the smoke profile (one task, one epoch at 64 px); the end-to-end tests beside these run
the same assets through the instance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from xray_assets import cli
from xray_assets.core import layout
from xray_assets.core.classes import TASKS
from xray_assets.defs import (
    datasets,
    drop_tables,
    drops,
    evaluation,
    gate,
    nih,
    serving,
    training,
    vinbigdata,
)
from xray_assets.defs.resources import SHARD_PARTITIONS, XrayResource
from xray_assets.records import EvaluationSummary, ModelRecord, find_rule

TASK = "nih_binary"


@pytest.fixture(scope="module")
def xray(sample_dir, tmp_path_factory) -> XrayResource:
    tmp = tmp_path_factory.mktemp("assets")
    data = shutil.copytree(sample_dir, tmp / "data")
    return XrayResource(
        data_dir=str(data),
        storage_dir=str(tmp / "storage"),
        profile="smoke",
        mlflow_tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        weights_dir=str(tmp / "weights"),
    )


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _run(asset, xray, instance=None, partition_key=None, **kwargs) -> dg.MaterializeResult:
    context = dg.build_asset_context(
        resources={"xray": xray}, partition_key=partition_key, instance=instance
    )
    return asset(context, **kwargs)


def _md(result) -> dict:
    return {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}


# The tests below share the module's storage and run in file order, each asset after its inputs.


def test_nih_labels(xray):
    md = _md(_run(nih.nih_labels, xray))
    labels = xray.storage.read_parquet(*layout.NIH_LABELS)
    assert md["dagster/row_count"] == len(labels) > 0 and md["quarantined_rows"] == 0
    assert {"image_id", "patient_id", "findings"} <= set(labels.columns)


def test_nih_boxes(xray):
    md = _md(_run(nih.nih_boxes, xray))
    boxes = xray.storage.read_parquet(*layout.NIH_BOXES)
    assert md["dagster/row_count"] == len(boxes) > 0
    assert (boxes["x_max"] > boxes["x_min"]).all() and (boxes["y_max"] > boxes["y_min"]).all()


def test_vinbigdata_annotations(xray):
    md = _md(_run(vinbigdata.vinbigdata_annotations, xray))
    ann = xray.storage.read_parquet(*layout.VBD_ANNOTATIONS)
    assert md["dagster/row_count"] == len(ann) > 0 and ann["rad_id"].nunique() > 1


def test_vinbigdata_images_every_shard(xray):
    converted = 0
    for shard in SHARD_PARTITIONS.get_partition_keys():
        md = _md(_run(vinbigdata.vinbigdata_images, xray, partition_key=shard))
        manifest = xray.storage.read_parquet(*layout.conversion_manifest(shard))
        assert (
            md["dagster/row_count"] == len(manifest)
            and md["images"] == (manifest["status"] == "ok").sum()
        )
        converted += md["images"]
    assert converted > 0


def test_vinbigdata_boxes(xray):
    md = _md(_run(vinbigdata.vinbigdata_boxes, xray))
    boxes = xray.storage.read_parquet(*layout.VBD_BOXES)
    assert md["dagster/row_count"] == len(boxes) > 0
    assert set(boxes["image_id"]) <= set(vinbigdata.read_manifests(xray.storage)["image_id"])


def test_background_samples(xray):
    md = _md(_run(datasets.background_samples, xray))
    assert md["dagster/row_count"] > 0


def test_patient_splits(xray):
    md = _md(_run(datasets.patient_splits, xray))
    splits = xray.storage.read_parquet(*layout.SPLITS)
    assert md["dagster/row_count"] == len(splits)
    assert splits.groupby("group")["split"].nunique().max() == 1, "no patient in two splits"
    assert set(splits["split"]) == {"train", "val", "test"}


def test_yolo_datasets(xray):
    md = _md(_run(datasets.yolo_datasets, xray, partition_key=TASK))
    images = xray.storage.read_parquet(*layout.dataset_images(TASK))
    assert md["dagster/row_count"] == len(images) > 0
    assert xray.storage.exists(*layout.dataset(TASK), layout.DATA_YAML)


def test_trained_models(xray, monkeypatch):
    monkeypatch.setenv("XRAY_TORCH_THREADS", "1")
    md = _md(
        _run(
            training.trained_models,
            xray,
            partition_key=TASK,
            config=training.TrainConfig(epochs=1),
        )
    )
    model = ModelRecord.read(xray.storage, TASK)
    assert md["registered_version"] == model.model_version == "1"
    assert md["init"] == model.init and model.imgsz == 64 and model.classes == TASKS[TASK].classes
    assert xray.storage.exists(*layout.weights(TASK))


def test_nms_thresholds(xray):
    md = _md(_run(evaluation.nms_thresholds, xray, partition_key=TASK))
    rule = find_rule(xray.storage, TASK)
    assert rule is not None and (md["conf"], md["iou"]) == (rule.conf, rule.iou)
    assert md["grid"].records and len(md["grid"].records) == 4  # the smoke grid: 2 x 2


def test_evaluation_reports(xray):
    md = _md(_run(evaluation.evaluation_reports, xray, partition_key=TASK))
    summary = EvaluationSummary.read(xray.storage, TASK)
    assert summary.model_version == "1" and summary.rule == find_rule(xray.storage, TASK)
    assert md["test_patients"] == summary.figures["test_patients"]
    assert md["test_map50 (threshold-free)"] == pytest.approx(summary.figures["map50"], abs=1e-4)
    assert "decision" not in md, "evaluation only evaluates: the gate decides"
    # every test box in exactly one size stratum, the strata in the summary, the table and the report
    f = summary.figures
    assert f["boxes_small"] + f["boxes_medium"] + f["boxes_large"] == f["test_boxes"]
    assert {"sens1_luna16_small", "sens1_iou_large"} <= set(f), (
        "FROC sensitivity by size, both rules"
    )
    by_size = xray.storage.read_parquet(*layout.report(TASK, "by_size.parquet"))
    assert set(by_size["stratum"]) == {"small", "medium", "large"}
    assert "## By box size" in xray.storage.local(*layout.report(TASK, "report.md")).read_text()
    line = cli.task_table(xray.storage_dir, xray.profile, [TASK])[1]
    assert "by size at the model's input: small:" in line, line


def test_champion_gate(xray):
    result = _run(gate.champion_gate, xray, partition_key=TASK)
    md = _md(result)
    assert md["decision"] == "champion" and md["version"] == "1" and md["held_by"] == "none"
    assert {c.check_name: c.passed for c in result.check_results} == {
        "inputs_within_quarantine_limit": True,
        "evaluated_on_current_test_split": True,
        "champion_rescored": True,
    }
    assert xray.storage.read_json(*layout.gate_record(TASK))["decision"] == "champion"


def test_champion_gate_fails_closed_when_the_champion_cannot_be_rescored(xray):
    """A version 2 meets champion v1 that cannot be re-scored: first without a detection rule on its
    tags, then with its weights gone from the artifact store. Each time the promotion is held (the
    blocking check fails, the alias stays on v1, the record says held and why), where the gate
    once read "nothing to compare with" as a first version and promoted."""
    from dataclasses import replace
    from urllib.parse import urlparse

    from xray_assets import tracking

    client, name = tracking.client(xray.tracking_uri), xray.config.model_name(TASK)
    v1 = client.get_model_version(name, "1")
    v2 = client.create_model_version(name, source=v1.source, run_id=v1.run_id)
    record = ModelRecord.read(xray.storage, TASK)
    replace(record, model_version=str(v2.version)).write(xray.storage)
    weights = Path(urlparse(client.get_run(v1.run_id).info.artifact_uri).path) / "weights"
    cached = xray.storage.local_path("serve", TASK, "v1")
    try:
        rule_conf = v1.tags["nms_conf"]
        client.delete_model_version_tag(name, "1", "nms_conf")
        for broken, why in (
            (None, "no detection rule (nms_conf) on its tags"),
            (weights, "weights"),
        ):
            if broken is not None:
                client.set_model_version_tag(name, "1", "nms_conf", rule_conf)
                broken.rename(broken.with_name("weights.gone"))
                shutil.rmtree(cached, ignore_errors=True)
            result = _run(gate.champion_gate, xray, partition_key=TASK)
            md = _md(result)
            checks = {c.check_name: c.passed for c in result.check_results}
            assert checks["champion_rescored"] is False, checks
            assert md["decision"] == "held" and md["version"] == str(v2.version), md
            assert f"{name} v1 could not be re-scored" in md["reason"] and why in md["reason"]
            assert str(tracking.alias_version(xray.tracking_uri, name, "champion").version) == "1"
            saved = xray.storage.read_json(*layout.gate_record(TASK))
            assert saved["decision"] == "held" and saved["held_by"] == ["champion_rescored"]
            tags = client.get_model_version(name, str(v2.version)).tags
            assert tags["gate_decision"] == "held"
    finally:
        if weights.with_name("weights.gone").exists():
            weights.with_name("weights.gone").rename(weights)
        client.set_model_version_tag(name, "1", "nms_conf", v1.tags["nms_conf"])
        client.delete_model_version(name, str(v2.version))
        record.write(xray.storage)
    assert _md(_run(gate.champion_gate, xray, partition_key=TASK))["decision"] == "champion"


def test_served_int8(xray):
    """The served version's INT8 export and its check: the verdict decides what serves, is tagged on
    the registry version and cached beside the weights (a second run reuses it)."""
    from xray_assets import tracking
    from xray_assets.defs import serving

    md = _md(_run(serving.served_int8, xray, partition_key=TASK))
    assert md["version"] == "1" and md["chosen"] == "champion"
    assert md["int8_check"] in ("passed", "failed") and md["test_images"] >= 1
    assert md["serves"].startswith("int8 ") == (md["int8_check"] == "passed"), md["serves"]
    assert md["calibration_images"] >= 1 and "float weights AP50" in md["reason"]
    tags = tracking.version_info(xray.tracking_uri, xray.config.model_name(TASK), "1")["tags"]
    assert tags["int8_check"] == md["int8_check"]
    folder = xray.storage.local_path("serve", TASK, "v1")
    assert list(folder.glob("*_serving_check.json")) and list(folder.glob("*_int8_openvino_model"))
    again = _md(_run(serving.served_int8, xray, partition_key=TASK))
    assert again["check_seconds"] == md["check_seconds"], "the cached verdict, not a new check"


def test_annotation_queue(xray):
    from xray_assets.core.splits import assign_splits
    from xray_assets.defs import annotation

    result = _run(
        annotation.annotation_queue, xray, partition_key=TASK, config=annotation.QueueConfig()
    )
    md = _md(result)
    queue = xray.storage.read_parquet(*layout.queue(TASK))
    assert md["model_version"] == "1" and md["dagster/row_count"] == len(queue) > 0
    assert md["candidates"] == len(queue) == md["partially_boxed"] + md["label_only"]
    boxed = set(xray.storage.read_parquet(*layout.NIH_BOXES)["image_id"])
    assert set(queue.loc[queue["kind"] == "label_only", "image_id"]).isdisjoint(boxed)
    test = queue["split"] == "test"
    assert queue.loc[test, "score"].isna().all(), "test patients are drawn, never ranked"
    assert (queue.loc[test, "selection"] == "random (test)").all()
    assert queue.loc[~test, "score"].notna().all() and list(queue["rank"]) == list(
        range(1, len(queue) + 1)
    )
    split = assign_splits([f"nih:{p}" for p in queue["patient_id"]], (0.8, 0.1, 0.1), 0)
    assert list(split) == list(queue["split"]), "the study's own split rule"
    again = _md(
        _run(annotation.annotation_queue, xray, partition_key=TASK, config=annotation.QueueConfig())
    )
    assert again["scored_this_run"] == 0, "scores are cached per (image, model version)"
    # the path the serving check chose for the queue on this CPU (served_int8's metadata says which)
    queue_path = _md(_run(serving.served_int8, xray, partition_key=TASK))["queue_ranks_on"]
    runtime = md["scoring_runtime"]
    assert (queue_path == "pytorch") == runtime.startswith("pytorch f32 "), (runtime, queue_path)
    assert (
        queue_path == "pytorch"
        or runtime.startswith("openvino ")
        and f"the {queue_path} path" in runtime
    )
    assert md["images_per_minute"] > 0


def test_annotation_batches(xray, instance, monkeypatch):
    """Without Label Studio configured the batch is written as files only (and says so)."""
    import json
    import xml.etree.ElementTree as ET

    from xray_assets.core import tool_formats
    from xray_assets.defs import annotation

    monkeypatch.delenv("XRAY_LABEL_STUDIO_URL", raising=False)
    key = annotation.batch_key(TASK, 1)
    instance.add_dynamic_partitions("annotation_batches", [key])
    md = _md(
        _run(
            annotation.annotation_batches,
            xray,
            instance=instance,
            partition_key=key,
            config=annotation.BatchConfig(size=3, min_score=0.001, max_per_image=2),
        )
    )
    st = xray.storage
    coco = json.loads(st.local(*layout.batch(key, layout.BATCH_COCO)).read_text())
    assert md["images"] == len(coco["images"]) > 0 and md["pre_annotations"] == len(
        coco["annotations"]
    )
    # no service: the batch says so, loudly, and how to send it
    assert (
        md["label_studio"].startswith("NOT SENT to Label Studio")
        and md["label_studio_project"] == 0
    )
    assert "make annotate" in md["label_studio"]
    # a batch once sent is never sent again (its radiologists would get every task twice)
    st.write_json(
        {"project": 7, "url": "http://127.0.0.1:1", "tasks": 3},
        *layout.batch(key, layout.BATCH_PROJECT),
    )
    with pytest.raises(dg.Failure, match="sent already .*project 7.*xray-assets batch"):
        _run(
            annotation.annotation_batches,
            xray,
            instance=instance,
            partition_key=key,
            config=annotation.BatchConfig(size=3),
        )
    st.local(*layout.batch(key, layout.BATCH_PROJECT)).unlink()
    assert ET.parse(st.local(*layout.batch(key, layout.BATCH_CVAT))).getroot().tag == "annotations"
    sent = st.read_parquet(*layout.batches_table(TASK))
    assert set(sent["image_id"]) == {im["file_name"] for im in coco["images"]}
    assert sent["patient_id"].is_unique, "one image per patient"
    # our COCO export read back as a drop gives the batch's boxes (in the images' own pixels): the
    # same boxes as its CVAT export, which writes corners
    folder = st.local_path(*layout.batch(key, "images"))
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    back = tool_formats.read_coco(st.local(*layout.batch(key, layout.BATCH_COCO)), sizes.get)
    corners = tool_formats.read_cvat(st.local(*layout.batch(key, layout.BATCH_CVAT)), sizes.get)
    assert len(back) == len(coco["annotations"]) == len(corners) > 0 and folder.is_dir()
    cols = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]
    pd.testing.assert_frame_equal(
        back[cols].sort_values(cols).reset_index(drop=True),
        corners[cols].sort_values(cols).reset_index(drop=True),
        atol=0.01,
        check_dtype=False,
    )


def test_study_report(xray):
    md = _md(_run(evaluation.study_report, xray))
    assert xray.storage.exists(*layout.report("study"))
    tasks = pd.DataFrame([r.data for r in md["tasks"].records])
    assert TASK in set(tasks["task"])


def test_annotation_drops(xray, instance):
    from xray_assets.core import inbox
    from xray_assets.core.synthetic import write_drop

    folder = write_drop(xray.inbox / "fast-drop", "nih", n_annotated=3, seed=21)
    key = inbox.partition_key(folder.name, inbox.drop_digest(folder))
    instance.add_dynamic_partitions("annotation_drops", [key])
    md = _md(
        _run(
            drops.annotation_drops,
            xray,
            instance=instance,
            partition_key=key,
            config=drops.DropConfig(),
        )
    )
    assert md["format"] == "nih" and md["images"] == 3 and md["rows"] > 0
    assert key in drop_tables.committed(xray.shared), (
        "the drop is committed: the label assets read it"
    )
    assert (xray.inbox / "accepted" / key).is_dir() and not folder.exists()


def test_every_asset_of_the_graph_has_a_fast_test_here():
    """Catches: a new asset added to the graph without a direct-invocation test in this module."""
    from xray_assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    tested = {name for name in globals() if name.startswith("test_")}
    missing = sorted(k for k in keys if not any(t.startswith(f"test_{k}") for t in tested))
    assert len(keys) == 17 and not missing, f"assets without a fast test: {missing}"
