"""The annotation loop end to end with a real Label Studio started by the test: queue, batch, tasks
with pre-annotations in Label Studio, a radiologist's submitted annotation (one pre-annotation
accepted, one moved, one deleted, one drawn), the sensor's request, the pull, the drop committed with
the four provenance kinds counted, and the label table and the task's dataset changed, the raw CSVs
untouched. The radiologist works in Label Studio's own pages, driven in chromium."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
import services
from browser import browser
from conftest import ROOT, project_dagster_home

from xray_assets import label_studio
from xray_assets.core import batch_export, inbox, layout
from xray_assets.core.classes import TASKS
from xray_assets.defs import (
    annotation,
    datasets,
    drops,
    evaluation,
    gate,
    nih,
    training,
    vinbigdata,
)
from xray_assets.defs.resources import SHARD_PARTITIONS, XrayResource

TASK = "nih_multi"


def radiologist(b, ls, project: int, plan: dict[int, str], hotkey: str, sizes: dict) -> None:
    """In chromium, through Label Studio's own pages: log in, open the labelling stream (tasks in
    id order, each starting from its pre-annotation) and, task by task, `redo` (delete the
    pre-annotation, draw the listed finding), `edit` (drag the box's right edge inwards), `accept`
    (submit as proposed); any other task is skipped. Each task's image must load in the page (an
    <img> of the PNG's natural size, `sizes`: task -> (width, height)). Every request to anything
    but 127.0.0.1 is recorded and refused (its page refers to a Sentry CDN script)."""
    headers = {"Authorization": f"Token {ls.token}"}
    tasks = httpx.get(f"{ls.url}/api/tasks", params={"project": project}, headers=headers).json()
    order = sorted(t["id"] for t in tasks["tasks"])
    last = max(plan, key=order.index)
    outside: list[str] = []
    page = b.new_page(viewport={"width": 1400, "height": 900})

    def route(r):
        if r.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{ls.url}/user/login")
    page.fill("input[name=email]", ls.user)
    page.fill("input[name=password]", ls.password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    page.goto(f"{ls.url}/projects/{project}/data?labeling=1")
    submit = page.get_by_test_id("bottombar-submit-button")
    for task in order[: order.index(last) + 1]:
        submit.wait_for(timeout=120_000)
        page.locator("div.lsf-image").first.wait_for(timeout=120_000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)
        width, height = sizes[task]  # the stream goes in id order (sequential sampling)
        page.wait_for_function(
            "([w, h]) => [...document.images].some(i => i.complete && i.naturalWidth === w "
            "&& i.naturalHeight === h)",
            arg=[width, height],
            timeout=60_000,
        )
        action = plan.get(task)
        if action is None:
            page.get_by_role("button", name="Skip").click()
            page.wait_for_timeout(1500)
            continue
        image = page.locator("div.lsf-image").first.bounding_box()

        def at(px: float, py: float) -> tuple[float, float]:
            return image["x"] + image["width"] * px / 100, image["y"] + image["height"] * py / 100

        (pred,) = httpx.get(
            f"{ls.url}/api/predictions", params={"task": task}, headers=headers
        ).json()
        v = pred["result"][0]["value"]
        region = page.locator(f"text={v['rectanglelabels'][0]}").last  # its row in the outliner
        if action == "redo":
            region.click()
            page.keyboard.press("Backspace")
            page.keyboard.press("Escape")
            page.keyboard.press(hotkey)
            x0, y0 = at(20, 55)
            x1, y1 = at(35, 70)
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x1, y1, steps=10)
            page.mouse.up()
        elif action == "edit":
            region.click()
            hx, hy = at(v["x"] + v["width"], v["y"] + v["height"] / 2)
            page.mouse.move(hx, hy)
            page.mouse.down()
            page.mouse.move(hx - image["width"] * v["width"] / 400, hy, steps=10)
            page.mouse.up()
        page.wait_for_timeout(500)
        submit.click()
        page.wait_for_timeout(1500)
    page.close()
    for task, action in plan.items():
        (a,) = [
            x
            for x in httpx.get(f"{ls.url}/api/tasks/{task}/annotations", headers=headers).json()
            if not x["was_cancelled"]
        ]
        assert len(a["result"]) == 1, f"task {task} ({action}): {a['result']}"
    assert not outside, f"the browser asked for something outside 127.0.0.1: {outside[:5]}"


def _v(x):
    return getattr(x, "value", x)


def _run(asset, xray, instance=None, partition_key=None, **kw):
    ctx = dg.build_asset_context(
        resources={"xray": xray}, partition_key=partition_key, instance=instance
    )
    return asset(ctx, **kw)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_batch_goes_to_label_studio_and_comes_back_as_a_drop(tmp_path, monkeypatch):
    from xray_assets.core.synthetic import write_sample_data

    data = tmp_path / "data"
    write_sample_data(data, size=40, seed=3, vinbigdata_max_side=700)
    raw = {p: p.read_bytes() for p in sorted(data.rglob("*.csv"))}
    xray = XrayResource(
        data_dir=str(data),
        storage_dir=str(tmp_path / "storage"),
        profile="smoke",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        weights_dir=str(tmp_path / "weights"),
    )
    monkeypatch.setenv("XRAY_TORCH_THREADS", "1")
    # the study for one task, each asset called as its run would
    for asset in (nih.nih_labels, nih.nih_boxes, vinbigdata.vinbigdata_annotations):
        _run(asset, xray)
    for shard in SHARD_PARTITIONS.get_partition_keys():
        _run(vinbigdata.vinbigdata_images, xray, partition_key=shard)
    for asset in (
        vinbigdata.vinbigdata_boxes,
        datasets.background_samples,
        datasets.patient_splits,
    ):
        _run(asset, xray)
    before = _v(_run(datasets.yolo_datasets, xray, partition_key=TASK).metadata["dataset_hash"])
    _run(training.trained_models, xray, partition_key=TASK, config=training.TrainConfig(epochs=1))
    for asset in (evaluation.nms_thresholds, evaluation.evaluation_reports, gate.champion_gate):
        _run(asset, xray, partition_key=TASK)
    _run(annotation.annotation_queue, xray, partition_key=TASK, config=annotation.QueueConfig())
    queue = xray.storage.read_parquet(*layout.queue(TASK))
    label_only = set(queue.loc[queue["kind"] == "label_only", "image_id"])
    # partially boxed images may fill the top of the queue: a batch past all of them reaches
    # label-only ones, whose pre-annotations can never be kept out for a finding boxed already
    size = int((queue["kind"] == "partial").sum()) + 6

    ls_log = tmp_path / "label-studio.log"
    with (
        services.label_studio(tmp_path / "storage", ls_log) as ls,
        dg.instance_for_test() as instance,
    ):
        # what `make annotate` printed: where, who, where the secrets are; never the secrets
        printed = ls_log.read_text()
        service_json = label_studio.service_file(tmp_path / "storage")
        assert ls.url in printed and ls.user in printed and str(service_json) in printed
        assert ls.password not in printed and ls.token not in printed
        assert service_json.stat().st_mode & 0o077 == 0, "service.json is its owner's only"
        assert len(ls.token) == 40 and int(ls.token, 16) >= 0
        # no XRAY_LABEL_STUDIO_URL or token: the pipeline finds the service `make annotate` started
        # the batch as docs/operating.md makes it: `xray-assets batch nih_multi`, through a
        # DAGSTER_HOME instance, its run in its own process
        key = annotation.batch_key(TASK, 1)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(project_dagster_home(tmp_path / "dagster_home")),
            "XRAY_DATA_DIR": str(data),
            "XRAY_STORAGE_DIR": str(tmp_path / "storage"),
            "XRAY_PROFILE": "smoke",
            "MLFLOW_TRACKING_URI": xray.tracking_uri,
            "XRAY_WEIGHTS_DIR": str(tmp_path / "weights"),
        }
        cli = Path(sys.executable).parent / "xray-assets"
        made = subprocess.run(
            [str(cli), "batch", TASK, "--size", str(size), "--test-share", "0"]
            + ["--min-score", "0.001", "--max-per-image", "1"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        assert f"batch {key}:" in made.stdout and "task(s) in Label Studio project" in made.stdout
        project = xray.storage.read_json(*layout.batch(key, layout.BATCH_PROJECT))["project"]
        assert project > 0
        assert xray.storage.exists(*layout.batch(key, layout.BATCH_COCO))
        api = httpx.Client(base_url=ls.url, headers={"Authorization": f"Token {ls.token}"})
        tasks = api.get("/api/tasks", params={"project": project}).json()["tasks"]
        assert [t["data"]["rank"] for t in tasks] == sorted(t["data"]["rank"] for t in tasks)
        # no pre-annotation of a finding the image already has boxes of; the task names those
        boxed = batch_export.boxed_findings(
            xray.storage.read_parquet(*layout.NIH_BOXES), [t["data"]["image_id"] for t in tasks]
        )
        assert any(boxed.values()), "the batch reaches partially boxed images"
        for t in tasks:
            proposed = {
                r["value"]["rectanglelabels"][0]
                for p in api.get("/api/predictions", params={"task": t["id"]}).json()
                for r in p["result"]
            }
            mine_boxed = set(boxed.get(t["data"]["image_id"], ()))
            assert not proposed & mine_boxed, (t["data"]["image_id"], proposed, mine_boxed)
            listed_boxed = {f for f in t["data"]["boxed"].split(", ") if f != "none"}
            assert listed_boxed <= mine_boxed
            for p in api.get("/api/predictions", params={"task": t["id"]}).json():
                assert p["score"] is None or 0 <= p["score"] <= 1, "the model's confidence"
        sizes = xray.storage.read_parquet(*layout.batch(key, layout.BATCH_IMAGES)).set_index(
            "image_id"
        )
        mine = [t for t in tasks if t["data"]["image_id"] in label_only and t["total_predictions"]]
        # the image the radiologist boxes: one listed finding (its box brings it into training)
        one = next(t for t in mine if "," not in t["data"]["findings"])
        chosen = [one] + [t for t in mine if t is not one][:2]
        assert len(chosen) == 3
        finding = one["data"]["findings"]
        hotkey = str(batch_export.nih_labels_of(TASKS[TASK]).index(finding) + 1)
        with browser() as b:
            radiologist(
                b,
                ls,
                project,
                {t["id"]: a for t, a in zip(chosen, ("redo", "edit", "accept"))},
                hotkey,
                {
                    t["id"]: (int(sizes.at[i, "width"]), int(sizes.at[i, "height"]))
                    for t in tasks
                    for i in [t["data"]["image_id"]]
                },
            )

        # Label Studio's own COCO and YOLO exports of the same annotations read as drops give the
        # same boxes as its JSON (pulled below)
        known = drops._known(xray, "")
        tool_boxes = {}
        for kind in ("COCO", "YOLO"):
            got = api.get(
                f"/api/projects/{project}/export", params={"exportType": kind}, timeout=120
            )
            assert got.status_code == 200, got.text[:300]
            folder = tmp_path / f"export-{kind}"
            zipfile.ZipFile(io.BytesIO(got.content)).extractall(folder)
            (folder / "READY").write_text("")
            tool_boxes[kind] = inbox.validate(folder, known).tables["boxes"]

        # the sensor only looks: it counts the project's annotated tasks and requests one pull
        ctx = dg.build_sensor_context(instance=instance, resources={"xray": xray})
        result = annotation.label_studio_annotations(ctx)
        (request,) = result.run_requests
        assert annotation.pull_annotations_job.execute_in_process(
            run_config=request.run_config, resources={"xray": xray}, instance=instance
        ).success
        again = annotation.label_studio_annotations(
            dg.build_sensor_context(
                instance=instance, resources={"xray": xray}, cursor=result.cursor
            )
        )
        assert not again.run_requests, "nothing new past the cursor"

        # the inbox sensor commits it as a drop, with the provenance counted
        tick = drops.new_annotations(
            dg.build_sensor_context(instance=instance, resources={"xray": xray})
        )
        (drop_request,) = tick.run_requests
        instance.add_dynamic_partitions("annotation_drops", [drop_request.partition_key])
        committed = _run(
            drops.annotation_drops,
            xray,
            instance=instance,
            partition_key=drop_request.partition_key,
            config=drops.DropConfig(**drop_request.run_config["ops"]["annotation_drops"]["config"]),
        ).metadata
        summary = _v(committed["summary"]).records[0].data
        assert _v(committed["format"]) == "label-studio"
        assert (
            summary["pre_annotations_accepted"],
            summary["pre_annotations_edited"],
            summary["added"],
            summary["pre_annotations_deleted"],
        ) == (1, 1, 1, 1)
        shared = xray.shared
        stored = shared.read_parquet("drops", drop_request.partition_key, "boxes.parquet")
        cols = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]

        def ordered(df):
            return df[cols].sort_values(cols).reset_index(drop=True)

        for kind, got in tool_boxes.items():
            assert len(got) == len(stored) == 3, kind
            pd.testing.assert_frame_equal(
                ordered(got), ordered(stored), atol=0.6, check_dtype=False, obj=kind
            )
        assert ls.user not in stored.to_csv(), "the annotator's e-mail never reaches a table"

    # the label assets re-read (and, as the automation would, what is below them): the task's
    # dataset changes, the raw files do not
    _run(nih.nih_boxes, xray)
    _run(datasets.patient_splits, xray)
    boxes = xray.storage.read_parquet(*layout.NIH_BOXES)
    mine = boxes[boxes["source"] == drop_request.partition_key]
    assert len(mine) == 3 and set(mine["image_id"]) == {t["data"]["image_id"] for t in chosen}, (
        "the drawn, the edited and the accepted box; the deleted one is evidence, not a box"
    )
    after = _v(_run(datasets.yolo_datasets, xray, partition_key=TASK).metadata["dataset_hash"])
    assert after != before
    assert raw == {p: p.read_bytes() for p in raw}, "the study's raw CSVs are byte-identical"
