"""The Dagster UI in a real browser (Debian chromium via Playwright) on `dagster dev` started by the test:
every asset in the catalog, the sensors and the schedule listed; "Materialize all" on the study launches
one backfill that the daemon completes, the automation sensor not racing it; trained_models' page shows
its owner, code version, automation condition and a plot thumbnail."""

import os
import sys
import time

import pytest
from browser import browser, free_port, server
from conftest import ROOT, project_dagster_home
from test_graph import DESIGN_ASSETS


def wait_for_a_tick(instance, sensor: str, after: float, timeout: float = 300) -> None:
    """Until the sensor has finished a tick that started after `after` (a condition, not a duration)."""
    from dagster._core.definitions.run_request import InstigatorType  # private: no public name
    from dagster._core.scheduler.instigation import TickStatus  # private: no public name

    deadline = time.time() + timeout
    while time.time() < deadline:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name != sensor:
                continue
            ticks = instance.get_ticks(
                state.instigator_origin_id, state.selector_id, after=after, limit=5
            )
            if any(t.status != TickStatus.STARTED for t in ticks):
                return
        time.sleep(1)
    raise AssertionError(f"sensor {sensor} did not tick within {timeout:.0f}s after the backfill")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_materialize_all_from_the_ui_runs_one_backfill_and_the_catalog_reads(tmp_path, sample_dir):
    import dagster as dg

    from xray_assets.backfill import BACKFILL_TAG

    home = project_dagster_home(tmp_path / "dagster_home")
    port = free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "XRAY_DATA_DIR": str(sample_dir),
        "XRAY_STORAGE_DIR": str(tmp_path / "st"),
        "XRAY_PROFILE": "smoke",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
    }
    dagster = ROOT / ".venv" / "bin" / "dagster"
    cmd = ([str(dagster)] if dagster.exists() else [sys.executable, "-m", "dagster"]) + [
        "dev",
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/server_info", env, ROOT, tmp_path / "dagster.log"), browser() as b:
        page = b.new_page(viewport={"width": 1500, "height": 1000})
        # the first-visit newsletter dialog is off (dagster.yaml `nux`); should a Dagster release show
        # it anyway, at whatever moment, it is dismissed before the next action
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        page.goto(f"{base}/assets?view=flat", wait_until="networkidle")
        for key in DESIGN_ASSETS:
            page.locator(f'a[href="/assets/{key}"]').first.wait_for(timeout=60_000)
        page.goto(f"{base}/automation", wait_until="networkidle")
        for kind, name in (
            ("sensors", "new_annotations"),
            ("sensors", "retrain_downstream"),
            ("schedules", "weekly_retrain"),
        ):
            page.locator(f'a[href$="/{kind}/{name}"]').first.wait_for(timeout=60_000)
        assert "only on Monday" in page.inner_text("body"), "the weekly schedule's cron is shown"

        # "Materialize all" on the study (drops are the sensor's and batches a person's: the lineage
        # filtered without them)
        page.goto(f"{base}/asset-groups", wait_until="networkidle")
        page.locator(".CodeMirror").first.click()
        page.keyboard.type("not key:annotation_drops and not key:annotation_batches")
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Materialize all").first.click()
        confirm = page.get_by_role(
            "button", name="Confirm"
        )  # "annotation_drops was never materialised"
        confirm.first.wait_for(timeout=30_000)
        confirm.first.click()
        page.get_by_text("Launch runs to materialize 15 assets").wait_for(timeout=30_000)
        page.get_by_role("button", name="Launch backfill").click()

        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.time() + 1200
            while time.time() < deadline:
                backfills = instance.get_backfills()
                if backfills and backfills[0].status.value not in (
                    "REQUESTED",
                    "CANCELING",
                    "FAILING",
                ):
                    break
                time.sleep(5)
            (bf,) = instance.get_backfills()
            assert bf.status.value == "COMPLETED_SUCCESS", bf.status
            wait_for_a_tick(
                instance, "retrain_downstream", after=time.time()
            )  # it looked after the backfill
            runs = instance.get_runs()
            assert runs and all(r.tags.get(BACKFILL_TAG) == bf.backfill_id for r in runs), (
                "every run is the backfill's: the automation sensor requested nothing beside it"
            )
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            for key in ("evaluation_reports", "champion_gate"):
                assert instance.get_materialized_partitions(dg.AssetKey(key)) == {
                    "nih_multi",
                    "nih_binary",
                    "united_multi",
                    "united_binary",
                    "united_cardiomegaly",
                    "united_mass_nodule",
                }, key

        page.goto(f"{base}/assets/trained_models", wait_until="networkidle")
        page.get_by_text("Automation condition").first.wait_for(timeout=60_000)
        page.get_by_text("Compute details").first.click()  # collapsed by default
        from xray_assets.defs.training import training_code_version

        # the code, ultralytics' and torch's versions and the smoke profile's training settings
        page.get_by_text(training_code_version("smoke")).first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert "Owners\nml" in text, "owner team:ml (the UI shows the team's name)"
        assert "Automation condition\non new data" in text, "the condition declared on the asset"
        # a plot thumbnail in the latest materialisation's metadata (Markdown opens in a dialog)
        page.locator("tr", has_text="training_curves").first.get_by_text("Show Markdown").click()
        thumbs = page.locator('img[src^="data:image/jpeg;base64"]')
        thumbs.first.wait_for(timeout=60_000)
        assert thumbs.count() == 1
        page.screenshot(path=str(tmp_path / "trained_models.png"), full_page=True)

        # the promotion is a node of its own, its decision in its metadata
        page.goto(f"{base}/assets/champion_gate", wait_until="networkidle")
        page.get_by_text("stated_null_rate").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "first version: nothing to compare with" in text and "champion" in text, text[:2000]
