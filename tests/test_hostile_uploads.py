"""Hostile uploads against a real server process: each is refused with the right status and message,
the server keeps answering /health, and the memory of its process tree (server and decode workers)
stays where it was. No model is needed: refusals happen before detection."""

import sys
import threading
import time

import hostile
import httpx
import psutil
from browser import free_port, server
from conftest import ROOT

APP = (
    "import uvicorn, sys; from xray_assets.serve.app import create_app; "
    "uvicorn.run(create_app([]), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')"
)


def tree_rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Peak(threading.Thread):
    """Samples the tree's RSS every 50 ms while the uploads run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            time.sleep(0.05)


def test_hostile_uploads_are_refused_and_the_server_stays_healthy(real_data, sample_dir, tmp_path):
    dicoms = real_data / "dicom"
    j2k = dicoms / "pydicom-data_RG1_J2KI.dcm"
    nih_png = next((sample_dir / "nih").rglob("*.png")).read_bytes()
    # a J2K DICOM whose header is modest but whose codestream declares 60000 x 60000
    data = bytearray(j2k.read_bytes())
    siz = data.find(b"\xff\x4f\xff\x51") + 4
    data[siz + 4 : siz + 12] = (60000).to_bytes(4, "big") * 2
    cases = [
        # (name, bytes, file name, status, words the message must hold)
        (
            "decompression bomb",
            hostile.png(30000, 30000),
            "bomb.png",
            413,
            ["30000 x 30000", "50 megapixels"],
        ),
        (
            "lying PNG header",
            hostile.png(100000, 100000, rows=1),
            "lie.png",
            413,
            ["100000 x 100000", "limit"],
        ),
        (
            "huge DICOM",
            hostile.dicom_with(j2k, Rows=60000, Columns=60000),
            "big.dcm",
            413,
            ["this DICOM declares 60000 x 60000", "limit"],
        ),
        (
            "huge frame count",
            hostile.dicom_with(dicoms / "fo-dicom_CR-ModalitySequenceLUT.dcm", NumberOfFrames=1000),
            "frames.dcm",
            413,
            ["1000 frames", "limit"],
        ),
        (
            "lying codestream",
            bytes(data),
            "siz.dcm",
            413,
            ["compressed frame declares 60000 x 60000"],
        ),
        (
            "corrupt JPEG 2000",
            hostile.corrupt_j2k(j2k, 60),
            "j2k.dcm",
            400,
            ["DICOM cannot be read", "decode"],
        ),
        ("truncated PNG", nih_png[:300], "cut.png", 400, ["corrupt"]),
        (
            "broken JPEG header",
            b"\xff\xd8\xff\xe0\x00\x02\xff\xda" + b"\0" * 100,
            "x.jpg",
            400,
            ["JPEG is corrupt"],
        ),
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        server(
            [sys.executable, "-c", APP, str(port)],
            f"{url}/health",
            {"XRAY_DECODE_WORKERS": "1"},
            ROOT,
            tmp_path / "serve.log",
        ) as proc,
        httpx.Client(timeout=120) as client,
    ):
        # one good upload first, so the decode worker exists and the baseline includes it
        assert (
            client.post(
                f"{url}/api/detect", files={"file": ("ok.png", nih_png, "image/png")}
            ).status_code
            == 200
        )
        before = tree_rss_mb(proc.pid)
        peak = Peak(proc.pid)
        peak.start()
        for name, body, fname, status, words in cases:
            r = client.post(
                f"{url}/api/detect", files={"file": (fname, body, "application/octet-stream")}
            )
            msg = r.json().get("error", "")
            assert r.status_code == status, f"{name}: {r.status_code} {msg}"
            assert all(w in msg for w in words), f"{name}: {msg!r} lacks {words}"
            assert fname not in msg and "xray-upload-" not in msg, (
                f"{name}: a file name leaked: {msg}"
            )
            assert client.get(f"{url}/health").json()["status"] == "ok", name
        # two bombs at once: both refused, nothing decoded
        import concurrent.futures as cf

        bomb = cases[0][1]
        with cf.ThreadPoolExecutor(2) as ex:
            codes = list(
                ex.map(
                    lambda _: (
                        client.post(
                            f"{url}/api/detect", files={"file": ("b.png", bomb)}
                        ).status_code
                    ),
                    range(2),
                )
            )
        assert codes == [413, 413]
        assert (
            client.post(
                f"{url}/api/detect", files={"file": ("ok.png", nih_png, "image/png")}
            ).status_code
            == 200
        )
        peak.stop.set()
        peak.join()
        after = tree_rss_mb(proc.pid)
        print(
            f"server tree RSS: {before:.0f} MB before, {peak.peak:.0f} MB peak, {after:.0f} MB after"
        )
        assert after - before < 300, f"memory grew from {before:.0f} to {after:.0f} MB"
        assert peak.peak - before < 300, f"memory peaked at {peak.peak:.0f} MB from {before:.0f} MB"
        assert proc.poll() is None


def test_a_decoder_that_crashes_fails_its_upload_only(tmp_path, sample_dir):
    """A decode worker killed by a signal (as a crash in openjpeg or libjpeg would) answers 400 for
    that upload; the next upload is decoded by a fresh worker."""
    import crashy
    from fastapi.testclient import TestClient

    from xray_assets.core.isolation import DecodeLimits
    from xray_assets.serve import app as app_module

    nih_png = next((sample_dir / "nih").rglob("*.png")).read_bytes()
    original = app_module.decode
    app_module.decode = crashy.decode  # crashes its worker on a file named crash.png
    try:
        with TestClient(
            app_module.create_app([], limits=DecodeLimits(workers=1, timeout_s=30))
        ) as client:
            r = client.post("/api/detect", files={"file": ("crash.png", nih_png)})
            assert r.status_code == 400 and "decoder crashed (SIGSEGV)" in r.json()["error"], r.text
            r = client.post("/api/detect", files={"file": ("ok.png", nih_png)})
            assert r.status_code == 200, r.text
    finally:
        app_module.decode = original
