"""Automation a team can trust (smoke, in process, each tick's requests run before the next tick):
unchanged data retrains nothing, a failing leak check stops datasets and training, a drop retrains the
tasks whose dataset changed and no others, the gate compares with the champion on the same images,
and a task that was never materialised does not hold the study report back."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from helpers import TASKS, graph, materialize_stages

from xray_assets.core.synthetic import write_drop
from xray_assets.defs.resources import XrayResource
from xray_assets.graph_order import study_assets


def _requested(result, defs) -> dict[str, set]:
    keys = defs.resolve_asset_graph().toposorted_asset_keys
    return {
        k.to_user_string(): set(result.get_requested_partitions(k))
        for k in keys
        if result.get_num_requested(k)
    }


def _settle(defs, everything, xray, instance, cursor, max_ticks: int = 14):
    """Tick the automation; run what each tick requests in dependency order, as the backfill Dagster
    makes of a tick's requests runs them (one run per level and partition); until a tick requests
    nothing. Returns (cursor, what was requested, tick by tick)."""
    levels = defs.resolve_asset_graph().toposorted_asset_keys_by_level
    ticks = []
    for _ in range(max_ticks):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor, requested = result.cursor, _requested(result, defs)
        if not requested:
            return cursor, ticks
        ticks.append(requested)
        for level in levels:
            by_partition: dict = {}
            for key in sorted(k.to_user_string() for k in level):
                for pk in sorted(requested.get(key, ()), key=str):
                    by_partition.setdefault(pk, []).append(key)
            for pk, keys in by_partition.items():
                assert dg.materialize(
                    everything,
                    selection=keys,
                    partition_key=pk,
                    instance=instance,
                    resources={"xray": xray},
                ).success, (keys, pk)
    pytest.fail(f"automation never settled: {ticks}")


def _all(ticks) -> dict[str, set]:
    out: dict[str, set] = {}
    for t in ticks:
        for k, parts in t.items():
            out.setdefault(k, set()).update(parts)
    return out


def _hashes(st) -> dict[str, str]:
    return {t: (st.root / "datasets" / t / "dataset_hash.txt").read_text() for t in TASKS}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_automation_retrains_what_changed_and_never_past_a_failing_check(
    data_copy, tmp_path, monkeypatch
):
    import mlflow

    from xray_assets.core import champion
    from xray_assets.core.classes import TASKS as TASK_DEFS
    from xray_assets.core.metrics import average_precision, paired_bootstrap
    from xray_assets.defs.drops import label_drops, new_annotations

    xray = XrayResource(
        data_dir=str(data_copy),
        storage_dir=str(tmp_path / "storage"),
        profile="smoke",
        champion_margin="0.0",
    )
    defs, everything = graph(xray)
    st = xray.storage
    client = mlflow.MlflowClient(tracking_uri=xray.tracking_uri, registry_uri=xray.tracking_uri)
    with dg.instance_for_test() as instance:
        assert all(r.success for r in materialize_stages(xray, instance))
        splits_before, hashes_before = (
            pd.read_parquet(st.root / "datasets" / "splits.parquet"),
            _hashes(st),
        )
        # `make ui` after `make demo`: the first ticks request nothing
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0, _requested(first, defs)
        cursor, ticks = _settle(defs, everything, xray, instance, first.cursor)
        assert ticks == []

        # 1. re-ingesting unchanged labels (what the weekly schedule does) launches nothing
        assert (
            defs.resolve_job_def("ingest_labels")
            .execute_in_process(instance=instance, resources={"xray": xray})
            .success
        )
        cursor, ticks = _settle(defs, everything, xray, instance, cursor)
        assert ticks == [], f"unchanged labels requested {ticks}"
        assert all(len(client.search_model_versions(f"name='xray-smoke-{t}'")) == 1 for t in TASKS)

        # 2. a leak planted in patient_splits: its blocking check fails and nothing downstream runs
        import xray_assets.defs.datasets as datasets_mod

        real = datasets_mod.assign_splits

        def leaky(groups, *a, **k):
            out = real(groups, *a, **k)
            nih = [i for i, g in enumerate(groups) if str(g).startswith("nih:")]
            counts = groups.iloc[nih].value_counts()
            patient = counts[counts > 1].index[0]  # a patient with two images in the study
            twin = [i for i in nih if groups.iloc[i] == patient][:2]
            out.iloc[twin[0]] = "test" if out.iloc[twin[1]] != "test" else "train"
            return out

        multi = splits_before[splits_before["source"] == "nih"].groupby("group").size()
        assert (multi > 1).any(), "the sample data has NIH patients with two images in the study"
        monkeypatch.setattr(datasets_mod, "assign_splits", leaky)
        res = dg.materialize(
            everything,
            selection=["patient_splits"],
            instance=instance,
            resources={"xray": xray},
            raise_on_error=False,
        )
        (leak,) = [
            c
            for c in res.get_asset_check_evaluations()
            if c.check_name == "no_patient_in_two_splits"
        ]
        assert leak.passed is False
        cursor, ticks = _settle(defs, everything, xray, instance, cursor)
        assert not ({"yolo_datasets", "trained_models"} & set(_all(ticks))), ticks
        # fixed: the check passes, the datasets are requested again (and, unchanged, train nothing)
        monkeypatch.setattr(datasets_mod, "assign_splits", real)
        res = dg.materialize(
            everything, selection=["patient_splits"], instance=instance, resources={"xray": xray}
        )
        assert all(
            c.passed
            for c in res.get_asset_check_evaluations()
            if c.check_name == "no_patient_in_two_splits"
        )
        cursor, ticks = _settle(defs, everything, xray, instance, cursor)
        assert _all(ticks).get("yolo_datasets") == set(TASKS), ticks
        assert "trained_models" not in _all(ticks), "the same datasets again: no training"
        assert _hashes(st) == hashes_before

        # 3. a VinBigData drop: the united datasets change, NIH's do not; exactly those tasks retrain
        write_drop(xray.inbox / "vbd-batch", "vinbigdata", n_annotated=24, seed=5)
        sensed = new_annotations(
            dg.build_sensor_context(instance=instance, resources={"xray": xray})
        )
        (rr,) = sensed.run_requests
        instance.add_dynamic_partitions("annotation_drops", [rr.partition_key])
        assert dg.materialize(
            everything,
            selection=["annotation_drops"],
            partition_key=rr.partition_key,
            instance=instance,
            resources={"xray": xray},
            run_config=rr.run_config,
        ).success
        # the label_drops sensor sees a committed drop no label table has read: it requests
        # ingest_labels (run here as the daemon would), and nothing more once they have
        behind = label_drops(dg.build_sensor_context(instance=instance, resources={"xray": xray}))
        (ingest,) = behind.run_requests
        assert (
            defs.resolve_job_def("ingest_labels")
            .execute_in_process(instance=instance, resources={"xray": xray}, tags=ingest.tags)
            .success
        )
        again = label_drops(dg.build_sensor_context(instance=instance, resources={"xray": xray}))
        assert not again.run_requests, "every committed drop is in the label tables"
        cursor, ticks = _settle(defs, everything, xray, instance, cursor)
        done = _all(ticks)
        changed = {t for t, h in _hashes(st).items() if h != hashes_before[t]}
        assert changed and changed <= {t for t in TASKS if t.startswith("united_")}
        assert done.get("trained_models") == changed, (done, changed)
        assert done.get("evaluation_reports") == changed and "study_report" in done
        assert {"vinbigdata_images", "patient_splits"} <= set(done)

    splits_after = pd.read_parquet(st.root / "datasets" / "splits.parquet")
    old = splits_before.merge(splits_after, on="image_id", suffixes=("_before", "_after"))
    assert len(old) == len(splits_before) and (old["split_before"] == old["split_after"]).all(), (
        "no existing patient changed split"
    )
    # 4. the gate: the champion (v1) re-scored on today's test images, the paired difference decides
    for task in sorted(changed):
        gate = json.loads((st.root / "reports" / task / "champion.json").read_text())
        v1 = client.get_model_version(f"xray-smoke-{task}", "1")
        assert gate["version"] == "2" and gate["compared_with"] == "1", gate
        gt = pd.read_parquet(st.root / "reports" / task / "ground_truth.parquet")
        ids = pd.read_parquet(st.root / "reports" / task / "test_images.parquet")["image_id"]
        assert gate["test_images"] == len(ids) > int(v1.tags["test_images"]), (
            "re-scored on the current, larger test split, not v1's stored figure"
        )
        new = pd.read_parquet(st.root / "reports" / task / "detections.parquet")
        old_dets = pd.read_parquet(st.root / "reports" / task / "champion_detections.parquet")
        direct = np.mean(list(average_precision(gt, new).values())) - np.mean(
            list(average_precision(gt, old_dets).values())
        )
        assert gate["diff"] == pytest.approx(direct), task
        # the decision follows the rule on the patient-level paired bootstrap, recomputed here
        images = pd.read_parquet(st.root / "reports" / task / "test_images.parquet")
        paired = paired_bootstrap(
            gt,
            new,
            old_dets,
            TASK_DEFS[task].classes,
            images["image_id"],
            n_boot=200,
            seed=0,
            groups=dict(zip(images["image_id"], images["group"])),
        )
        again = champion.gate_record(paired, 0.0, "2", "1", rate=0.2, min_boxes=10)
        assert (gate["decision"], gate["null_rate"], gate["test_boxes"]) == (
            again["decision"],
            again["null_rate"],
            again["test_boxes"],
        ), (gate, again)
        assert (
            gate["null_rate"] <= 0.2
            and gate["stated_null_rate"] == 0.2
            and gate["rule"] == again["rule"]
        )
        alias = client.get_model_version_by_alias(f"xray-smoke-{task}", "champion").version
        assert str(alias) == ("2" if gate["decision"] == "champion" else "1")
    for task in set(TASKS) - changed:
        assert len(client.search_model_versions(f"name='xray-smoke-{task}'")) == 1, (
            f"{task} was not retrained"
        )

    # 5. champion_gate alone: it puts back a hand-moved alias, and a failing blocking check holds it
    task = sorted(changed)[0]
    name = f"xray-smoke-{task}"
    kept = str(client.get_model_version_by_alias(name, "champion").version)
    moved = "1" if kept == "2" else "2"
    client.set_registered_model_alias(name, "champion", moved)
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            everything,
            selection=["champion_gate"],
            partition_key=task,
            instance=instance,
            resources={"xray": xray},
        ).success
        assert str(client.get_model_version_by_alias(name, "champion").version) == kept, (
            "the gate's decision again"
        )
        client.set_registered_model_alias(name, "champion", moved)
        planted = pd.DataFrame(
            {"source": "Data_Entry_2017.csv", "row": range(2, 13), "reason": "planted", "raw": "x"}
        )  # 11 rows, over the smoke profile's limit of 10
        st.write_parquet(planted, "nih", "labels_quarantine.parquet")
        held = dg.materialize(
            everything,
            selection=["champion_gate"],
            partition_key=task,
            instance=instance,
            resources={"xray": xray},
            raise_on_error=False,
        )
        (check,) = [
            c
            for c in held.get_asset_check_evaluations()
            if c.check_name == "inputs_within_quarantine_limit"
        ]
        assert not check.passed
        assert str(client.get_model_version_by_alias(name, "champion").version) == moved, (
            "a failing blocking check holds the alias where it is"
        )
        gate = json.loads((st.root / "reports" / task / "champion.json").read_text())
        assert gate["held_by"] == ["inputs_within_quarantine_limit"] and gate["reason"].startswith(
            "held by"
        )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_study_report_does_not_wait_for_a_task_never_materialised(sample_dir, tmp_path):
    xray = XrayResource(
        data_dir=str(sample_dir), storage_dir=str(tmp_path / "storage"), profile="smoke"
    )
    defs, everything = graph(xray)
    with dg.instance_for_test() as instance:
        materialize_stages(
            xray,
            instance,
            select=study_assets(defs.resolve_asset_graph(), up_to="yolo_datasets"),
            tasks=["nih_binary"],
        )
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert dg.materialize(
            everything,
            selection=["trained_models"],
            partition_key="nih_binary",
            instance=instance,
            resources={"xray": xray},
        ).success
        _, ticks = _settle(defs, everything, xray, instance, first.cursor)
        done = _all(ticks)
        assert done.get("nms_thresholds") == {"nih_binary"} and done.get("evaluation_reports") == {
            "nih_binary"
        }
        assert "study_report" in done, (
            "five task partitions never materialised do not hold the report back"
        )
        mat = instance.get_latest_materialization_event(
            dg.AssetKey("study_report")
        ).asset_materialization
        assert set(mat.metadata["missing_tasks"].value.split(", ")) == set(TASKS) - {"nih_binary"}
