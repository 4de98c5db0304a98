import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    value = os.environ.get("XRAY_REAL_DATA")
    return Path(value) if value else None


@pytest.fixture
def real_data() -> Path:
    d = real_data_dir()
    if d is None:
        pytest.skip("XRAY_REAL_DATA is unset: the genuine public files are not beside this checkout")
    if not d.is_dir():
        pytest.skip(f"XRAY_REAL_DATA={d} is not a folder")
    return d


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every connection that leaves the machine (loopback and unix sockets stay allowed)."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        host = address[0] if isinstance(address, tuple) else address
        if str(host).startswith("127.") or host in ("localhost", "::1"):
            return real_connect(self, address)
        raise OSError(f"network disabled in this test: refused connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network disabled in this test")))
    yield


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample dataset, generated once per session."""
    from xray_assets.core.synthetic import write_sample_data

    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, size=16, seed=3, vinbigdata_max_side=700)
    return out


@pytest.fixture
def data_copy(sample_dir, tmp_path) -> Path:
    """A private copy of the sample data for tests that merge drops into it (append-only)."""
    import shutil

    return Path(shutil.copytree(sample_dir, tmp_path / "data"))


TOY_SIZE = 128


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """A three-class (nih_multi) model trained long enough to find things: (weights, data.yaml)."""
    from xray_assets.config import configure_ultralytics
    from xray_assets.core.synthetic import toy_yolo_dataset

    tmp = tmp_path_factory.mktemp("toy_model")
    data = toy_yolo_dataset(tmp, "nih_multi", 40, TOY_SIZE,
                            [["Cardiomegaly"], ["Mass"], ["Effusion"], ["Cardiomegaly", "Effusion"], []], (0.7, 0.9))
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    YOLO("yolov8n.yaml").train(data=str(data), epochs=30, imgsz=TOY_SIZE, batch=8, workers=0, plots=False, val=False,
                               device="cpu", project=str(tmp / "runs"), name="t", exist_ok=True, mosaic=0, nbs=8,
                               optimizer="AdamW", lr0=0.01, warmup_epochs=1, amp=False, verbose=False)
    return tmp / "runs" / "t" / "weights" / "last.pt", data
