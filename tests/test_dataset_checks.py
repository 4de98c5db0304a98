"""Dataset checks fail, visibly in the materialisation result, on a deliberately leaked dataset."""

import dagster as dg
import pandas as pd
from helpers import graph, materialize_stages

from xray_assets.defs.resources import XrayResource
from xray_assets.graph_order import study_assets


def test_leaked_dataset_fails_its_checks(sample_dir, tmp_path):
    xray = XrayResource(data_dir=str(sample_dir), storage_dir=str(tmp_path / "st"), profile="smoke")
    _, everything = graph(xray)
    with dg.DagsterInstance.ephemeral() as instance:
        results = materialize_stages(
            xray,
            instance,
            select=study_assets(graph(xray)[0].resolve_asset_graph(), up_to="patient_splits"),
        )
        assert all(r.success for r in results)
        ok = [
            e
            for r in results
            for e in r.get_asset_check_evaluations()
            if e.check_name == "no_patient_in_two_splits"
        ]
        assert ok and all(e.passed for e in ok)

        # leak: move one image of a patient with several images into another split
        path = tmp_path / "st" / "smoke" / "datasets" / "splits.parquet"
        table = pd.read_parquet(path)
        nih = table[table.source == "nih"]
        group = nih.groupby("group").size().loc[lambda s: s > 1].index[0]
        row = table.index[table.group == group][0]
        table.loc[row, "split"] = {"train": "test", "val": "train", "test": "train"}[
            table.loc[row, "split"]
        ]
        table.to_parquet(path, index=False)

        res = dg.materialize(
            everything,
            selection=["yolo_datasets"],
            partition_key="nih_multi",
            instance=instance,
            resources={"xray": xray},
            raise_on_error=False,
        )
        evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
        assert evals["no_patient_in_two_splits"].passed is False
        assert evals["no_patient_in_two_splits"].metadata["leaked_patients"].value == 1
        assert evals["boxes_inside_images"].passed and evals["listed_images_exist"].passed

        # the standalone check on patient_splits sees it too
        res = dg.materialize(
            everything,
            selection=dg.AssetSelection.checks_for_assets("patient_splits"),
            instance=instance,
            resources={"xray": xray},
            raise_on_error=False,
        )
        evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
        assert evals["no_patient_in_two_splits"].passed is False
