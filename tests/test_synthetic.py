import hashlib

import numpy as np
import pandas as pd
import pydicom

from xray_assets.core.classes import NIH_CLASSES
from xray_assets.core.synthetic import NIH_BBOX_HEADER, NIH_DATA_ENTRY_HEADER, render


def test_nih_layout_and_headers(sample_dir):
    nih = sample_dir / "nih"
    entry = (nih / "Data_Entry_2017.csv").read_text().splitlines()
    assert entry[0] == NIH_DATA_ENTRY_HEADER and entry[1].endswith(",")
    assert (nih / "BBox_List_2017.csv").read_text().splitlines()[0] == NIH_BBOX_HEADER
    pngs = list(nih.glob("images_*/images/*.png"))
    assert len(pngs) == len(entry) - 1
    boxes = pd.read_csv(nih / "BBox_List_2017.csv")
    assert set(boxes["Finding Label"]) == set(NIH_CLASSES)
    patients = pd.read_csv(nih / "Data_Entry_2017.csv", index_col=False)["Patient ID"]
    assert patients.value_counts().max() > 1, "some patients have follow-up images"
    from PIL import Image

    from xray_assets.core.detection import read_gray

    modes = {p: Image.open(p).mode for p in pngs}
    assert "L" in modes.values()
    rgba = [p for p, m in modes.items() if m == "RGBA"]
    assert rgba, "a few RGBA files, like the real set"
    img = np.asarray(Image.open(rgba[0]))
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 3] == 255).all(), (
        "grey in colour channels, opaque"
    )
    assert (read_gray(rgba[0]) == img[..., 0]).all(), "the pipeline reads it as the same grey image"


def test_vinbigdata_readers_disagree_and_dicoms_vary(sample_dir):
    vbd = sample_dir / "vinbigdata"
    df = pd.read_csv(vbd / "train.csv")
    assert list(df.columns) == [
        "image_id",
        "class_name",
        "class_id",
        "rad_id",
        "x_min",
        "y_min",
        "x_max",
        "y_max",
    ]
    assert df.groupby("image_id")["rad_id"].nunique().eq(3).all()
    nf = df[df.class_id == 14]
    assert len(nf) and nf[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert df["class_id"].isin([0, 9, 11, 13]).any(), "findings outside the six mapped classes"
    kinds = {"photometric": set(), "bits": set(), "syntax": set(), "voi": set(), "rescale": set()}
    for f in (vbd / "train").glob("*.dicom"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        kinds["photometric"].add(ds.PhotometricInterpretation)
        kinds["bits"].add(int(ds.BitsStored))
        kinds["syntax"].add(str(ds.file_meta.TransferSyntaxUID))
        kinds["voi"].add("WindowCenter" in ds)
        kinds["rescale"].add(float(ds.get("RescaleIntercept", 0)))
    assert kinds["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert min(kinds["bits"]) == 12 and max(kinds["bits"]) == 16
    assert "1.2.840.10008.1.2.4.90" in kinds["syntax"] and "1.2.840.10008.1.2.1" in kinds["syntax"]
    assert kinds["voi"] == {True, False} and len(kinds["rescale"]) > 1


def test_generator_is_deterministic(tmp_path):
    from xray_assets.core.synthetic import write_sample_data

    def digest(d):
        h = hashlib.sha256()
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.suffix in (".csv", ".png"):
                h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    write_sample_data(tmp_path / "a", size=3, seed=5, vinbigdata_max_side=300)
    write_sample_data(tmp_path / "b", size=3, seed=5, vinbigdata_max_side=300)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_each_class_has_its_own_look():
    """The lesion changes the pixels inside its box far more than outside it."""
    for i, label in enumerate(NIH_CLASSES):
        base, _ = render(np.random.default_rng(i), [], 256, 256)
        img, lesions = render(np.random.default_rng(i), [label], 256, 256)
        assert [lesion.label for lesion in lesions] == [label]
        x0, y0, x1, y1 = (np.array(lesions[0].box) * 256).astype(int)
        diff = np.abs(img - base)
        mask = np.zeros_like(diff, bool)
        mask[y0:y1, x0:x1] = True
        inside, outside = diff[mask].mean(), diff[~mask].mean()
        assert inside > 0.04, label
        assert inside > 1.5 * outside, (
            label,
            inside,
            outside,
        )  # pneumothorax also clears markings beside its box


def test_label_only_and_partially_boxed_images_at_nih_rates_with_their_truth_in_an_oracle(
    sample_dir,
):
    """As in NIH: several label-only images per box image, about 65% of box images list another
    box-class finding without a box; the oracle (outside nih/ and vinbigdata/) holds the true box of
    exactly those unboxed findings, and none of them is in the box list."""
    import json

    from xray_assets.core.labels import read_nih_boxes, read_nih_labels
    from xray_assets.core.synthetic import LABEL_ONLY_RATIO, ORACLE

    labels = read_nih_labels(sample_dir / "nih" / "Data_Entry_2017.csv")
    boxes = read_nih_boxes(sample_dir / "nih" / "BBox_List_2017.csv")
    oracle_path = sample_dir.joinpath(*ORACLE)
    assert oracle_path.parent.name not in ("nih", "vinbigdata")
    oracle = read_nih_boxes(oracle_path)
    listed = {
        (i, f)
        for i, fs in zip(labels["image_id"], labels["findings"])
        for f in fs
        if f in NIH_CLASSES
    }
    boxed = set(zip(boxes["image_id"], boxes["label"]))
    assert set(zip(oracle["image_id"], oracle["label"])) == listed - boxed
    assert not set(zip(oracle["image_id"], oracle["label"])) & boxed
    box_images = set(boxes["image_id"])
    partial = {i for i, _ in listed - boxed if i in box_images}
    label_only = {i for i, _ in listed - boxed if i not in box_images}
    size = json.loads((sample_dir / "SAMPLE_DATA.json").read_text())["size"]
    assert len(label_only) == round(LABEL_ONLY_RATIO * size)
    assert 0.4 <= len(partial) / len(box_images) <= 0.9, len(partial) / len(box_images)
    inside = oracle[["x_min", "y_min", "x_max", "y_max"]]
    assert (inside >= 0).all().all() and (inside <= 1024).all().all()
    assert (oracle["x_max"] > oracle["x_min"]).all() and (oracle["y_max"] > oracle["y_min"]).all()


def test_the_pipeline_never_reads_the_oracle():
    """Catches: a module of the package (not the generator that writes it) naming the oracle file,
    which would let the simulation's answers leak into the study."""
    from pathlib import Path

    import xray_assets
    from xray_assets.core.synthetic import ORACLE

    package = Path(xray_assets.__file__).parent
    readers = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "synthetic.py"
        and any(s in p.read_text() for s in ("ORACLE", ORACLE[-1], "oracle_nih"))
    ]
    assert readers == []
