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
