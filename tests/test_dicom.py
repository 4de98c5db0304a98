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
