import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before xray_assets (hence ultralytics) is imported anywhere: a fresh ultralytics config dir for the
# session (so a missing font would really be fetched, and the guard would see it), and the recording
# network guard in this process and, through sitecustomize, in every Python subprocess a test starts.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="xray-tests-"))
os.environ["YOLO_CONFIG_DIR"] = str(_SESSION_TMP / "ultralytics")
# Hypothesis (the fuzz harness) keeps its cache of source constants here, not in ./.hypothesis
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(_SESSION_TMP / "hypothesis")
os.environ["XRAY_NETGUARD_LOG"] = str(_SESSION_TMP / "netguard.jsonl")
_GUARD_SITE = str(Path(__file__).parent / "guard_site")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_GUARD_SITE, os.environ.get("PYTHONPATH")) if p
)
sys.path.insert(0, str(Path(__file__).parent))
import netguard  # noqa: E402

netguard.install()

import pytest  # noqa: E402

import xray_assets  # noqa: E402,F401  (its offline settings, before any test imports mlflow or ultralytics)

ROOT = Path(__file__).resolve().parents[1]
_IGNORE_NEW = (".pytest_cache", "__pycache__", ".venv", ".ultralytics")


def _checkout_entries() -> set[str]:
    """Untracked and ignored paths in the checkout (what `git status --ignored` lists)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {
        line[3:]
        for line in out.stdout.splitlines()
        if line[:2] in ("??", "!!")
        and not any(part in _IGNORE_NEW for part in Path(line[3:]).parts)
    }


def _free_gb(path: str) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e9


def _disk_places() -> dict[str, str]:
    """Where the suite writes: the checkout (the venv) and the temporary folder; one entry when they share a disk."""
    places = {"checkout": str(ROOT)}
    if os.stat(tempfile.gettempdir()).st_dev != os.stat(ROOT).st_dev:
        places["tmp"] = tempfile.gettempdir()
    return places


def pytest_sessionstart(session):
    session.config._xray_checkout = _checkout_entries()
    session.config._xray_guard = netguard.mark()
    session.config._xray_disk_low = {k: _free_gb(v) for k, v in _disk_places().items()}


def pytest_report_header(config):
    from importlib.metadata import version

    names = ("dagster", "mlflow", "ultralytics", "torch", "pydicom", "pandas", "numpy")
    places = _disk_places()
    free = ", ".join(f"{k} {v} {_free_gb(v):.1f} GB free" for k, v in places.items())
    lines = [
        "xray-assets versions: " + ", ".join(f"{n} {version(n)}" for n in names),
        f"disk: {free}",
    ]
    if min(_free_gb(v) for v in places.values()) < 2:
        lines.append(
            "WARNING: under 2 GB free; the suite's files peak at about 0.3 GB (measured), and on a full "
            "disk every test that asks for tmp_path errors in its setup"
        )
    return lines


def _guarded_phase(item):
    position = netguard.mark()
    result = yield
    found = netguard.since(position)
    if found:
        item.config._xray_guard_hits = getattr(item.config, "_xray_guard_hits", 0) + len(found)
        raise AssertionError(f"{item.nodeid}: {netguard.describe(found)}")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    try:
        return (yield from _guarded_phase(item))
    finally:
        low = item.config._xray_disk_low
        for k, v in _disk_places().items():
            low[k] = min(low[k], _free_gb(v))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Free disk at the end and the least seen after any test: a suite that dies of a full disk says so."""
    low = getattr(config, "_xray_disk_low", None)
    if low:
        terminalreporter.write_line(
            "disk: "
            + ", ".join(
                f"{k} {_free_gb(v):.1f} GB free at the end, {low[k]:.1f} GB at the lowest after a test"
                for k, v in _disk_places().items()
            )
        )


def pytest_sessionfinish(session, exitstatus):
    """Outside any test (collection, session fixtures): no network attempt; and the suite leaves no
    new file in the checkout (runs/, instance databases, storage...)."""
    problems = []
    found = [r for r in netguard.since(session.config._xray_guard)]
    attributed = getattr(session.config, "_xray_guard_hits", 0)
    if len(found) > attributed:
        problems.append(netguard.describe(found))
    if session.testscollected and not os.environ.get("XRAY_SKIP_CHECKOUT_CHECK"):
        new = sorted(_checkout_entries() - session.config._xray_checkout)
        if new:
            problems.append(f"the test suite left new file(s) in the checkout: {new[:20]}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for p in problems:
            if reporter:
                reporter.write_line(f"ERROR: {p}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # the session's ultralytics config dir and guard log (read above): nothing left behind in /tmp
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def project_dagster_home(home: Path) -> Path:
    """`home` made a DAGSTER_HOME with the project's dagster.yaml (sqlite storage under it, the local
    run limit and pools), as `make ui` and the CLI use it."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def real_data_dir() -> Path | None:
    value = os.environ.get("XRAY_REAL_DATA")
    return Path(value) if value else None


@pytest.fixture
def real_data() -> Path:
    """The genuine public files (XRAY_REAL_DATA): skipped when XRAY_REAL_DATA is unset, a failure
    when it is set and the files are not there (a CI that silently skips them proves nothing)."""
    d = real_data_dir()
    if d is None:
        pytest.skip(
            "XRAY_REAL_DATA is unset: the genuine public files are not beside this checkout"
        )
    expected = [d / "nih" / "BBox_List_2017.csv", d / "vinbigdata" / "train_meta.csv", d / "dicom"]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        pytest.fail(f"XRAY_REAL_DATA={d} is set but lacks {missing}")
    return d


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample dataset, generated once per session."""
    from xray_assets.core.synthetic import write_sample_data

    out = tmp_path_factory.mktemp("sample")
    # seed 16: the NIH test split has two box images without an unboxed finding (65% of box images
    # list one, as in NIH; those always leave the test split)
    write_sample_data(out, size=16, seed=16, vinbigdata_max_side=700)
    return out


@pytest.fixture
def data_copy(sample_dir, tmp_path) -> Path:
    """A private copy of the sample data for tests that change it."""
    import shutil

    return Path(shutil.copytree(sample_dir, tmp_path / "data"))


TOY_SIZE = 128


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """A three-class (nih_multi) model trained long enough to find things: (weights, data.yaml)."""
    from xray_assets.config import configure_ultralytics
    from xray_assets.core.synthetic import toy_yolo_dataset

    tmp = tmp_path_factory.mktemp("toy_model")
    data = toy_yolo_dataset(
        tmp,
        "nih_multi",
        40,
        TOY_SIZE,
        [["Cardiomegaly"], ["Mass"], ["Effusion"], ["Cardiomegaly", "Effusion"], []],
        (0.7, 0.9),
    )
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"mlflow": False})
    YOLO("yolov8n.yaml").train(
        data=str(data),
        epochs=30,
        imgsz=TOY_SIZE,
        batch=8,
        workers=0,
        plots=False,
        val=False,
        device="cpu",
        project=str(tmp / "runs"),
        name="t",
        exist_ok=True,
        mosaic=0,
        nbs=8,
        optimizer="AdamW",
        lr0=0.01,
        warmup_epochs=1,
        amp=False,
        verbose=False,
    )
    return tmp / "runs" / "t" / "weights" / "last.pt", data
