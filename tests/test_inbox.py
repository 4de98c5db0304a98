"""The annotation inbox and its sensor: complete drops merge and trigger once; others never do."""

import json

import dagster as dg
import pytest

from xray_assets.core import champion, inbox
from xray_assets.core.labels import read_nih_labels, read_vinbigdata_annotations
from xray_assets.core.synthetic import write_drop
from xray_assets.defs.automation import new_annotations
from xray_assets.defs.resources import XrayResource


def _tick(xray, cursor=None, instance=None):
    with dg.instance_for_test() if instance is None else _same(instance) as inst:
        ctx = dg.build_sensor_context(instance=inst, cursor=cursor, resources={"xray": xray})
        result = new_annotations(ctx)
        return result, ctx


class _same:
    def __init__(self, instance):
        self.instance = instance

    def __enter__(self):
        return self.instance

    def __exit__(self, *exc):
        return False


@pytest.fixture
def xray(data_copy, tmp_path):
    return XrayResource(data_dir=str(data_copy), storage_dir=str(tmp_path / "storage"), profile="smoke")


def test_complete_nih_drop_yields_one_run_and_merges_append_only(xray, data_copy):
    before = read_nih_labels(data_copy / "nih" / "Data_Entry_2017.csv")
    raw_before = (data_copy / "nih" / "BBox_List_2017.csv").read_bytes()
    write_drop(xray.inbox / "batch-1", "nih", n_annotated=4)
    result, _ = _tick(xray)
    assert len(result.run_requests) == 1
    rr = result.run_requests[0]
    assert rr.run_key.startswith("drop-") and rr.tags["xray/drop"] == "batch-1"
    after = read_nih_labels(data_copy / "nih" / "Data_Entry_2017.csv")
    new = after[~after["image_id"].isin(before["image_id"])]
    assert len(after) == len(before) + len(new) and len(new) >= 4
    assert (after.iloc[:len(before)].reset_index(drop=True)["image_id"] == before["image_id"]).all()
    assert (data_copy / "nih" / "BBox_List_2017.csv").read_bytes().startswith(raw_before), "append-only"
    assert all((data_copy / "nih" / "images_inbox" / "images" / i).exists() for i in new["image_id"])
    kept = list((xray.inbox / "merged").glob("batch-1-*"))
    assert len(kept) == 1 and (kept[0] / "READY").exists(), "the original drop is kept"
    assert not (xray.inbox / "batch-1").exists()
    assert json.loads(result.cursor)["merged"]


def test_incomplete_drop_yields_nothing_and_stays(xray):
    write_drop(xray.inbox / "half", "nih", n_annotated=2, ready=False)
    result, _ = _tick(xray)
    assert not result.run_requests
    assert "without READY" in result.skip_reason.skip_message
    assert (xray.inbox / "half" / "Data_Entry_2017.csv").exists()


def test_same_drop_twice_yields_one_run(xray, tmp_path):
    import shutil

    drop = write_drop(tmp_path / "export", "vinbigdata", n_annotated=3)
    shutil.copytree(drop, xray.inbox / "batch")
    first, _ = _tick(xray)
    assert len(first.run_requests) == 1
    shutil.copytree(drop, xray.inbox / "batch-again")   # the same export dropped again
    second, _ = _tick(xray, cursor=first.cursor)
    assert not second.run_requests
    assert "already merged" in second.skip_reason.skip_message
    third, _ = _tick(xray, cursor=second.cursor)                    # and a later tick: still nothing
    assert not third.run_requests


def test_vinbigdata_drop_adds_rows_and_dicoms(xray, data_copy):
    n_before = len(read_vinbigdata_annotations(data_copy / "vinbigdata" / "train.csv"))
    write_drop(xray.inbox / "vbd", "vinbigdata", n_annotated=3, seed=7)
    result, _ = _tick(xray)
    assert len(result.run_requests) == 1
    after = read_vinbigdata_annotations(data_copy / "vinbigdata" / "train.csv")
    assert len(after) > n_before
    assert all((data_copy / "vinbigdata" / "train" / f"{i}.dicom").exists() for i in after["image_id"].unique())


def _unknown_label(folder):
    p = folder / "BBox_List_2017.csv"
    lines = p.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = "Alien"
    p.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    return "BBox_List_2017.csv row 2: label 'Alien' is not one of the 8 NIH box classes"


def _missing_image(folder):
    png = sorted(folder.rglob("*.png"))[0]
    png.unlink()
    return f"missing image file(s) named by Data_Entry_2017.csv: {png.name}"


def _bad_csv(folder):
    (folder / "BBox_List_2017.csv").write_text("this is not,an annotation export\n1,2\n")
    return "header is neither"


def _bad_row(folder):
    p = folder / "Data_Entry_2017.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([*lines, "broken.png"]) + "\n")
    return "Data_Entry_2017.csv row"


def _existing_image(folder):
    png = sorted(folder.rglob("*.png"))[0]
    old, new = png.name, "00000001_000.png"      # the sample data's first image
    for f in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        (folder / f).write_text((folder / f).read_text().replace(old, new))
    png.rename(png.with_name(new))
    return f"image id(s) already in the raw data: {new}"


def _other_columns(folder):
    p = folder / "Data_Entry_2017.csv"
    rows = [line.split(",") for line in p.read_text().splitlines()]
    for r in rows:
        r[4], r[5] = r[5], r[4]                  # Patient Gender before Patient Age, values too
    p.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return "differ from Data_Entry_2017.csv's"


@pytest.mark.parametrize("break_it", [_unknown_label, _missing_image, _bad_csv, _bad_row, _existing_image,
                                      _other_columns])
def test_malformed_drop_is_rejected_with_a_readable_error(xray, data_copy, break_it):
    raw = {f: (data_copy / "nih" / f).read_bytes() for f in ("Data_Entry_2017.csv", "BBox_List_2017.csv")}
    folder = write_drop(xray.inbox / "bad", "nih", n_annotated=3)
    files_before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    expected = break_it(folder)
    result, _ = _tick(xray)
    assert not result.run_requests
    assert "rejected bad" in result.skip_reason.skip_message
    rejected = xray.inbox / "rejected" / "bad"
    error = (rejected / inbox.ERROR_FILE).read_text()
    assert expected in error, error
    kept = sorted(p.relative_to(rejected) for p in rejected.rglob("*") if p.is_file() and p.name != inbox.ERROR_FILE)
    assert len(kept) == len(files_before) - (break_it is _missing_image), "nothing in the drop is lost"
    assert {f: (data_copy / "nih" / f).read_bytes() for f in raw} == raw, "a rejected drop merges nothing"


def test_champion_gate_promotes_only_when_not_worse(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("gate", artifact_location=str(tmp_path / "art"))
    client.create_registered_model("xray-t")

    def version():
        run = client.create_run(exp)
        return client.create_model_version("xray-t", f"runs:/{run.info.run_id}/weights", run.info.run_id).version

    assert champion.served_version(uri, "xray-t") == (None, "none")
    v1 = version()
    assert champion.served_version(uri, "xray-t") == (str(v1), "latest")
    first = champion.gate(uri, "xray-t", v1, 0.60, margin=0.02)
    assert first["decision"] == "champion" and first["champion_map50_before"] is None
    v2 = version()
    worse = champion.gate(uri, "xray-t", v2, 0.55, margin=0.02)
    assert worse["decision"] == "challenger" and worse["champion_map50_before"] == pytest.approx(0.60)
    assert str(client.get_model_version_by_alias("xray-t", "champion").version) == str(v1)
    assert str(client.get_model_version_by_alias("xray-t", "challenger").version) == str(v2)
    v3 = version()
    close = champion.gate(uri, "xray-t", v3, 0.59, margin=0.02)   # within the margin
    assert close["decision"] == "champion" and close["champion_version_before"] == str(v1)
    assert champion.served_version(uri, "xray-t") == (str(v3), "champion")
    assert champion.decide(float("nan"), 0.5, 0.0) == "challenger"
    assert champion.decide(0.1, None, 0.0) == "champion"
