"""Helpers for the browser tests: Debian's chromium driven by Playwright, servers on free ports."""

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

#: the same rule as .ci/run: XRAY_CHROMIUM, else Debian's /usr/bin/chromium
CHROMIUM = os.environ.get("XRAY_CHROMIUM", "/usr/bin/chromium")


def missing_service(what: str) -> None:
    """Skip on a developer machine without it; fail in CI (.ci/run sets XRAY_REQUIRE_SERVICES=1)."""
    if os.environ.get("XRAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} (XRAY_REQUIRE_SERVICES=1: .ci/run installs it)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not up after {timeout}s:\n{log.read_text()[-4000:]}")


def start(cmd: list[str], url: str, env: dict, cwd: Path, log: Path, timeout: float = 180):
    """`cmd` in its own session (its output appended to `log`), once `url` answers."""
    with open(log, "a") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(url, proc, log, timeout)
    return proc


@contextmanager
def server(cmd: list[str], url: str, env: dict, cwd: Path, log: Path, timeout: float = 180):
    proc = start(cmd, url, env, cwd, log, timeout)
    try:
        yield proc
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def browser():
    if not Path(CHROMIUM).exists():
        missing_service(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            b.close()
