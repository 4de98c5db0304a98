import numpy as np
import pytest

from xray_assets.core.dicom import DicomError, read_dicom, read_dicom_image


def _psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def test_sample_dicoms_convert_back_to_the_rendered_look(sample_dir, tmp_path):
    from xray_assets.core.synthetic import _encode_variant, render, write_dicom

    img, _ = render(np.random.default_rng(0), ["Mass"], 64, 48)
    for i in range(8):
        v = _encode_variant(i)
        f = tmp_path / f"{i}.dicom"
        write_dicom(f, img, v, serial=i)
        out = read_dicom(f)
        assert out.pixels.dtype == np.uint8 and out.pixels.shape == (64, 48)
        assert (out.orig_height, out.orig_width) == (64, 48)
        # display-ready: bright stays bright whatever the photometric interpretation
        corr = np.corrcoef(out.pixels.ravel(), img.ravel())[0, 1]
        assert corr > (0.99 if v["syntax"] != "j2k_lossy" else 0.95), v


def test_max_size_bounds_the_longest_side(sample_dir):
    f = next((sample_dir / "vinbigdata" / "train").glob("*.dicom"))
    img = read_dicom_image(f, max_size=128)
    assert max(img.shape) == 128


def test_not_a_dicom_is_a_clear_error(tmp_path):
    f = tmp_path / "x.dicom"
    f.write_bytes(b"this is not a dicom at all" * 10)
    with pytest.raises(DicomError, match="x.dicom"):
        read_dicom_image(f)


def test_real_dicoms_convert(real_data):
    files = sorted((real_data / "dicom").iterdir())
    assert len(files) >= 7
    for f in files:
        img = read_dicom_image(f, max_size=512)
        assert img.dtype == np.uint8 and img.ndim == 2 and max(img.shape) <= 512, f.name
        assert img.std() > 5, f.name


def test_real_nih_dicom_matches_its_png(real_data):
    from xray_assets.core.labels import load_gray

    dcm = next((real_data / "dicom").glob("nih_gcp_*.dcm"))
    png = load_gray(real_data / "nih" / "images" / "00000002_000.png")
    assert _psnr(read_dicom_image(dcm), png) > 40


def _pydicom_reference(path, max_size):
    """Independent reference: pydicom's own LUT functions, then min-max of the window's range."""
    import cv2
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception:
        ds = pydicom.dcmread(path, force=True)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    arr = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        out = apply_voi_lut(arr, ds, index=0)
        if "VOILUTSequence" in ds:
            lo, hi = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        else:
            bits = int(ds.BitsStored)
            lo, hi = 0.0, 2.0**bits - 1
            if ds.get("ModalityLUTSequence"):
                hi = 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
            if "RescaleSlope" in ds:
                lo, hi = (
                    lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                    hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                )
    else:
        out, lo, hi = arr, float(arr.min()), float(arr.max())
    img = np.clip((out.astype(float) - lo) / (hi - lo), 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 1 - img
    img = (img * 255 + 0.5).astype(np.uint8)
    h, w = img.shape
    s = max_size / max(h, w)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return img


def test_real_dicoms_match_a_pydicom_reference(real_data):
    for f in sorted((real_data / "dicom").iterdir()):
        ours = read_dicom_image(f, max_size=512)
        ref = _pydicom_reference(f, 512)
        assert ours.shape == ref.shape, f.name
        assert _psnr(ours, ref) >= 40, (f.name, _psnr(ours, ref))


def test_j2k_fast_path_matches_full_decode(real_data, sample_dir):
    from xray_assets.core.dicom import _decode_j2k_reduced, _read_dataset

    files = [
        real_data / "dicom" / "pydicom-data_RG1_J2KI.dcm",
        real_data / "dicom" / "pydicom-data_RG3_J2KR.dcm",
    ]
    for f in files:
        assert _decode_j2k_reduced(_read_dataset(f), 400) is not None, (
            f"{f.name}: fast path not taken"
        )
        fast = read_dicom(f, max_size=400, fast=True).pixels
        full = read_dicom(f, max_size=400, fast=False).pixels
        assert fast.shape == full.shape
        assert _psnr(fast, full) >= 40, (f.name, _psnr(fast, full))
        assert _psnr(fast, _pydicom_reference(f, 400)) >= 40


def test_conversion_reads_each_new_file_once_in_its_worker_and_an_unchanged_one_not_at_all(
    sample_dir, tmp_path
):
    """A first plan hashes nothing (the worker hashes the bytes it converts, and says so in its
    row); a re-run over an unchanged manifest reads nothing; a touched file is hashed (and kept when
    its bytes are the same); a changed one is converted again."""
    import hashlib
    import os
    import shutil

    import pandas as pd

    from xray_assets.core.dicom import convert_one, file_sha256, plan_conversion

    sources = []
    for f in sorted((sample_dir / "vinbigdata" / "train").glob("*.dicom"))[:3]:
        sources.append(tmp_path / f.name)
        shutil.copyfile(f, sources[-1])
    hashed: list[str] = []

    def digest(p):
        hashed.append(p.name)
        return file_sha256(p)

    empty = pd.DataFrame(
        columns=["image_id", "max_size", "status", "path", "stat_key", "source_hash"]
    )
    keep, todo = plan_conversion(sources, empty, set(), 64, digest)
    assert not keep and [t[1] for t in todo] == [None] * 3 and hashed == [], (
        "no read before the workers"
    )
    rows = []
    for p, _, key in todo:
        r = convert_one(str(p), str(tmp_path / "png" / f"{p.stem}.png"), 64)
        assert (
            r["status"] == "ok" and r["source_hash"] == hashlib.sha256(p.read_bytes()).hexdigest()
        )
        rows.append({"image_id": p.stem, "max_size": 64, "stat_key": key, **r})
    manifest = pd.DataFrame(rows)
    pngs = {f"{p.stem}.png" for p in sources}
    keep, todo = plan_conversion(sources, manifest, pngs, 64, digest)
    assert len(keep) == 3 and not todo and hashed == [], "an unchanged re-run reads no file"
    touched, changed = sources[0], sources[1]
    os.utime(touched, (1e9, 1e9))
    changed.write_bytes(changed.read_bytes() + b"\0\0")
    keep, todo = plan_conversion(sources, manifest, pngs, 64, digest)
    assert sorted(hashed) == sorted([touched.name, changed.name])
    assert [t[0] for t in todo] == [changed] and todo[0][1] == file_sha256(changed)
    assert {k["image_id"] for k in keep} == {touched.stem, sources[2].stem}
    bad = tmp_path / "bad.dicom"
    bad.write_bytes(b"not a dicom at all")
    r = convert_one(str(bad), str(tmp_path / "png" / "bad.png"), 64)
    assert (
        r["status"] == "quarantined"
        and r["source_hash"] == hashlib.sha256(b"not a dicom at all").hexdigest()
    )
