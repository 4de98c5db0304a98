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
def label_studio(tmp: Path, document_root: Path):
    """Label Studio 1.23 from its own environment (`make annotate`'s, or XRAY_LABEL_STUDIO_VENV) on
    127.0.0.1, offline, sqlite under `tmp`, local files from `document_root`; a fresh admin and API
    token per start. The tests' network guard runs inside it (PYTHONPATH's sitecustomize)."""
    import secrets

    from xray_assets import label_studio as ls

    venv = Path(os.environ.get("XRAY_LABEL_STUDIO_VENV") or ROOT / ".venv-label-studio")
    if not (venv / "bin" / "label-studio").exists():
        missing_service(
            f"Label Studio is not installed in {venv} (make .venv-label-studio/.installed)"
        )
    port, token = free_port(), secrets.token_hex(20)
    user, password = "radiologist@example.org", secrets.token_urlsafe(16)
    data = tmp / "label-studio"
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / "label-studio.log"
    env = {**os.environ, **ls.service_env(data, document_root, token)}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ls.start_command(venv, data, port, user, password, token),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log, timeout=600)
        yield LabelStudio(url, token, user, password)
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
