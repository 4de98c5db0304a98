"""Real servers started by tests: PostgreSQL (Debian's binaries) and an S3-compatible server (moto)."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from browser import free_port, missing_service, wait_http


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres(tmp: Path):
    """A private PostgreSQL cluster on 127.0.0.1 with trust auth; yields connection settings."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        missing_service("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(found[-1]).parent
    # a folder the postgres user can reach (pytest's tmp folders are private to their owner)
    base = Path(tempfile.mkdtemp(prefix="xray-pg-"))
    data, sock = base / "pgdata", base / "pgsock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        for p in (base, data, sock):
            shutil.chown(p, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    log = base / "pg.log"
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "dagster",
                ]
            ),
            check=True,
            capture_output=True,
        )
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "trust-auth",
        }
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def s3_server(tmp: Path):
    """moto's S3-compatible server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, log, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


ROOT = Path(__file__).resolve().parents[1]


class LabelStudio:
    def __init__(self, url: str, token: str, user: str, password: str):
        self.url, self.token, self.user, self.password = url, token, user, password


@contextmanager
def label_studio(storage_dir: Path, log: Path):
    """Label Studio 1.23 started exactly as `make annotate` starts it: `xray-assets annotate --venv
    .venv-label-studio` (or XRAY_LABEL_STUDIO_VENV) with XRAY_STORAGE_DIR = `storage_dir`, on a free
    port; no credentials in the environment, so it generates and stores them under the storage root
    as it does for a newcomer (`service.json`), and the pipeline finds it there. Offline; the tests'
    network guard runs inside it (PYTHONPATH's sitecustomize)."""
    import signal
    import sys

    from xray_assets import label_studio as ls

    venv = Path(os.environ.get("XRAY_LABEL_STUDIO_VENV") or ROOT / ".venv-label-studio")
    if not (venv / "bin" / "label-studio").exists():
        missing_service(
            f"Label Studio is not installed in {venv} (make .venv-label-studio/.installed)"
        )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ls.CREDENTIAL_ENV}
    env["XRAY_STORAGE_DIR"] = str(storage_dir)
    env.pop("XRAY_LABEL_STUDIO_URL", None)
    cli = Path(sys.executable).parent / "xray-assets"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(cli), "annotate", "--venv", str(venv), "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=600)
        service = ls.stored_service(storage_dir)
        assert service is not None and service.url.endswith(f":{port}"), log.read_text()[-2000:]
        yield LabelStudio(service.url, service.token, service.user, service.password)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
