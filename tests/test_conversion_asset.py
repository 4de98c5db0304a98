"""vinbigdata_images: bad files are quarantined and the run goes on; a second run converts nothing; a
DICOM whose bytes change is converted again, a touched but identical one is not."""

import hashlib
import os
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pydicom
from helpers import materialize_stages

from xray_assets.defs.resources import XrayResource

SELECT = ["vinbigdata_annotations", "vinbigdata_images"]


def _converted(results) -> int:
    return sum(
        e.materialization.metadata["converted_this_run"].value
        for r in results
        for e in r.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "vinbigdata_images"
    )


def _manifest(root) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in (root / "vinbigdata" / "images").glob("manifest-*.parquet")]
    )


def test_conversion_quarantines_bad_files_and_reconverts_only_changed_sources(sample_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    train = data / "vinbigdata" / "train"
    (train / "0badc0de0badc0de0badc0de0badc0de.dicom").write_bytes(b"\x00" * 200 + b"not a dicom")
    ds = pydicom.dcmread(
        next(train.glob("*.dicom"))
    )  # a DICOM without pixel data (a structured report, say)
    del ds.PixelData
    ds.save_as(train / "5eed5eed5eed5eed5eed5eed5eed5eed.dicom")

    xray = XrayResource(data_dir=str(data), storage_dir=str(tmp_path / "st"), profile="smoke")
    root = tmp_path / "st" / "smoke"
    with dg.instance_for_test() as instance:
        first = materialize_stages(xray, instance, select=SELECT)
        assert all(r.success for r in first)
        man = _manifest(root)
        bad = man[man.status != "ok"].set_index("image_id")
        assert set(bad.index) == {
            "0badc0de0badc0de0badc0de0badc0de",
            "5eed5eed5eed5eed5eed5eed5eed5eed",
        }
        assert "not a DICOM" in bad.loc["0badc0de0badc0de0badc0de0badc0de", "reason"]
        assert "no pixel data" in bad.loc["5eed5eed5eed5eed5eed5eed5eed5eed", "reason"]
        ok = man[man.status == "ok"]
        assert len(ok) == len(list(train.glob("*.dicom"))) - 2
        assert (ok.orig_height >= ok.height).all() and (ok.orig_height > ok.height).any(), (
            "downscaled to the profile's size"
        )
        assert _converted(first) == len(man)
        assert _converted(materialize_stages(xray, instance, select=SELECT)) == 0, (
            "nothing new: nothing converted"
        )

        victims = sorted(ok.image_id)[:2]
        touched, changed = (train / f"{v}.dicom" for v in victims)
        touched.write_bytes(touched.read_bytes())  # same bytes, new mtime: hashed, found unchanged
        os.utime(touched, (1e9, 1e9))
        png = root / "vinbigdata" / "images" / "png" / f"{victims[1]}.png"
        png_before = hashlib.sha256(png.read_bytes()).hexdigest()
        ds = pydicom.dcmread(changed)  # new pixels: a brighter square in the middle
        arr = ds.pixel_array.copy()
        h, w = arr.shape
        arr[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = int(arr.max())
        ds.PixelData = arr.astype(arr.dtype).tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(changed, enforce_file_format=True)
        third = materialize_stages(xray, instance, select=SELECT)
        assert _converted(third) == 1, "only the DICOM whose bytes changed is converted again"
        after = _manifest(root).set_index("image_id")
        assert (
            after.loc[victims[1], "source_hash"]
            != ok.set_index("image_id").loc[victims[1], "source_hash"]
        )
        assert hashlib.sha256(png.read_bytes()).hexdigest() != png_before, (
            "its PNG shows the new pixels"
        )
        assert (
            after.loc[victims[0], "source_hash"]
            == ok.set_index("image_id").loc[victims[0], "source_hash"]
        )
        assert np.array_equal(
            after.loc[victims[0], ["height", "width"]].to_numpy(int),
            ok.set_index("image_id").loc[victims[0], ["height", "width"]].to_numpy(int),
        )


def test_a_file_that_crashes_its_decoder_is_quarantined_and_the_shard_converts_the_rest(
    sample_dir, tmp_path, monkeypatch
):
    """A DICOM that kills its worker (as a crash in openjpeg would: SIGSEGV) and one whose header
    declares 60000 x 60000 are quarantined with the reason; every other DICOM is converted."""
    import crashy

    from xray_assets.core import dicom

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    train = data / "vinbigdata" / "train"
    first = next(train.glob("*.dicom"))
    (train / "crash0000000000000000000000000000.dicom").write_bytes(first.read_bytes())
    ds = pydicom.dcmread(first)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(train / "b16b16b16b16b16b16b16b16b16b16b1.dicom")
    monkeypatch.setattr(dicom, "convert_one", crashy.convert_one)
    monkeypatch.setenv("XRAY_DECODE_TIMEOUT_S", "60")
    xray = XrayResource(data_dir=str(data), storage_dir=str(tmp_path / "st"), profile="smoke")
    with dg.instance_for_test() as instance:
        assert all(r.success for r in materialize_stages(xray, instance, select=SELECT))
    man = _manifest(tmp_path / "st" / "smoke").set_index("image_id")
    bad = man[man.status != "ok"]
    assert set(bad.index) == {
        "crash0000000000000000000000000000",
        "b16b16b16b16b16b16b16b16b16b16b1",
    }
    assert "decoder crashed (SIGSEGV)" in bad.loc["crash0000000000000000000000000000", "reason"]
    assert "60000 x 60000" in bad.loc["b16b16b16b16b16b16b16b16b16b16b1", "reason"]
    assert "limit is 50 megapixels" in bad.loc["b16b16b16b16b16b16b16b16b16b16b1", "reason"]
    assert (man.status == "ok").sum() == len(list(train.glob("*.dicom"))) - 2
