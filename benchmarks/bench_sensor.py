"""The inbox sensor's tick on a 2,000-image NIH drop: the first tick (content hash of every file) and a
later one (hash cached by the folder's stat key), against what the sensor used to do inside its tick
and the `annotation_drops` run now does: validate the drop and copy its images. Goal: a tick < 5 s."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

IMAGES = 2000


def main() -> list[dict]:
    import dagster as dg

    from xray_assets.core import inbox
    from xray_assets.core.synthetic import write_drop, write_sample_data
    from xray_assets.defs.drops import new_annotations
    from xray_assets.defs.resources import XrayResource

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample_data(tmp / "data", size=8, seed=1, vinbigdata_max_side=400)
        xray = XrayResource(
            data_dir=str(tmp / "data"), storage_dir=str(tmp / "st"), profile="smoke"
        )
        folder = write_drop(xray.inbox / "big", "nih", n_annotated=IMAGES, seed=9)
        n = len(list(folder.glob("**/*.png")))
        with dg.instance_for_test() as instance:
            t = time.perf_counter()
            first = new_annotations(
                dg.build_sensor_context(instance=instance, resources={"xray": xray})
            )
            first_s = time.perf_counter() - t
            assert len(first.run_requests) == 1
            t = time.perf_counter()
            later = new_annotations(
                dg.build_sensor_context(
                    instance=instance, cursor=first.cursor, resources={"xray": xray}
                )
            )
            later_s = time.perf_counter() - t
            assert not later.run_requests
        t = time.perf_counter()
        drop = inbox.validate(folder, inbox.Known())
        out = tmp / "copied"
        out.mkdir()
        for name, src in drop.images.items():
            shutil.copyfile(src, out / name)
        merge_s = time.perf_counter() - t
    what = f"validate and copy {n} images (the old tick's merge, now the run's)"
    return [
        {
            "benchmark": f"inbox tick, {n}-image drop",
            "ours_s": first_s,
            "baseline_s": merge_s,
            "speedup": merge_s / first_s,
            "baseline": what,
        },
        {
            "benchmark": "inbox tick, drop already seen",
            "ours_s": later_s,
            "baseline_s": merge_s,
            "speedup": merge_s / later_s,
            "baseline": what,
        },
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(
            f"{r['benchmark']:34s} {r['ours_s']:7.2f} s vs {r['baseline_s']:7.2f} s  ({r['baseline']})"
        )
