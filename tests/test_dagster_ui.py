"""The Dagster UI in a real browser: `dagster dev` started by the test, every DESIGN asset in the
asset catalog, the inbox sensor and the retraining schedule listed."""

import shutil

import pytest

from browser import browser, free_port, server
from conftest import ROOT
from test_graph import DESIGN_ASSETS


@pytest.mark.slow
def test_dagster_ui_lists_assets_sensor_and_schedule(tmp_path, sample_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {"DAGSTER_HOME": str(home), "XRAY_DATA_DIR": str(sample_dir), "XRAY_STORAGE_DIR": str(tmp_path / "st"),
           "XRAY_PROFILE": "smoke", "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "yolo")}
    cmd = [str(ROOT / ".venv" / "bin" / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    if not (ROOT / ".venv" / "bin" / "dagster").exists():
        import sys
        cmd = [sys.executable, "-m", "dagster", *cmd[1:]]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/server_info", env, ROOT, tmp_path / "dagster.log"), browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/assets?view=flat", wait_until="networkidle")
        skip = page.get_by_role("button", name="Skip")      # the first-visit newsletter dialog
        if skip.count():
            skip.first.click()
        for key in DESIGN_ASSETS:
            page.locator(f'a[href="/assets/{key}"]').first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "catalog.png"))
        page.goto(f"{base}/automation", wait_until="networkidle")
        for kind, name in (("sensors", "new_annotations"), ("sensors", "retrain_downstream"),
                           ("schedules", "weekly_retrain")):
            page.locator(f'a[href$="/{kind}/{name}"]').first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "Standard sensor" in text and "Automation condition sensor" in text
        assert "only on Monday" in text, "the weekly schedule's cron is shown"
