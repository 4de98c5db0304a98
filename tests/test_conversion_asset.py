"""vinbigdata_images: bad files are quarantined and the run goes on; a second run converts nothing."""

import shutil

import dagster as dg
import pandas as pd
import pydicom

from xray_assets.cli import materialize_graph
from xray_assets.defs.resources import XrayResource


def test_conversion_quarantines_bad_files_and_is_incremental(sample_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    train = data / "vinbigdata" / "train"
    (train / "0badc0de0badc0de0badc0de0badc0de.dicom").write_bytes(b"\x00" * 200 + b"not a dicom")
    # a DICOM without pixel data (a structured report, say)
    ds = pydicom.dcmread(next(train.glob("*.dicom")))
    del ds.PixelData
    ds.save_as(train / "5eed5eed5eed5eed5eed5eed5eed5eed.dicom")

    xray = XrayResource(data_dir=str(data), storage_dir=str(tmp_path / "st"), profile="smoke")
    select = ["vinbigdata_annotations", "vinbigdata_images"]
    with dg.DagsterInstance.ephemeral() as instance:
        first = materialize_graph(instance=instance, xray=xray, select=select)
        assert all(r.success for r in first)
        man = pd.concat([pd.read_parquet(p) for p in (tmp_path / "st" / "vinbigdata" / "images").glob("manifest-*.parquet")])
        bad = man[man.status != "ok"].set_index("image_id")
        assert set(bad.index) == {"0badc0de0badc0de0badc0de0badc0de", "5eed5eed5eed5eed5eed5eed5eed5eed"}
        assert "not a DICOM" in bad.loc["0badc0de0badc0de0badc0de0badc0de", "reason"]
        assert "no pixel data" in bad.loc["5eed5eed5eed5eed5eed5eed5eed5eed", "reason"]
        ok = man[man.status == "ok"]
        assert len(ok) == len(list(train.glob("*.dicom"))) - 2
        assert (ok.orig_height > ok.height).all() or (ok.orig_height >= ok.height).all()
        converted = sum(e.materialization.metadata["converted_this_run"].value
                        for r in first for e in r.get_asset_materialization_events()
                        if e.asset_key.to_user_string() == "vinbigdata_images")
        assert converted == len(man)

        second = materialize_graph(instance=instance, xray=xray, select=select)
        again = sum(e.materialization.metadata["converted_this_run"].value
                    for r in second for e in r.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == "vinbigdata_images")
        assert again == 0

        # a changed source is converted again, nothing else
        victim = next(iter(sorted(ok.image_id)))
        f = train / f"{victim}.dicom"
        f.write_bytes(f.read_bytes())  # same content, new mtime: hashed, found unchanged
        third = materialize_graph(instance=instance, xray=xray, select=select)
        assert sum(e.materialization.metadata["converted_this_run"].value
                   for r in third for e in r.get_asset_materialization_events()
                   if e.asset_key.to_user_string() == "vinbigdata_images") == 0
