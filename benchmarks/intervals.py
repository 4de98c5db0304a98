"""How wide the test intervals are when patients, not images, are the unit, on a materialised study.

    python benchmarks/intervals.py [STORAGE_ROOT] [--profile demo] [--resamples 1000]

Reads each evaluated task's stored test detections, ground truth and patient groups and prints, per
task: mAP50; its 95% interval from an image-level bootstrap (every image its own patient) and from the
patient-level bootstrap the evaluation uses, both with the same resamples, seed and fixed class set and
shown whatever the box count; what the evaluation reports (the patient-level interval, or "too few test
boxes" below `--min-boxes` per class); and what the champion gate can resolve on that split (the null rate of the point rule at the margin
against an equally good independent model, and the smallest margin the split resolves at 20%).
Not a timing benchmark: the figures a reviewer asks for, from data already on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from xray_assets.core import champion
from xray_assets.core.classes import TASK_NAMES, TASKS
from xray_assets.core.evaluation import interval_text, patients
from xray_assets.core.metrics import MIN_TEST_BOXES, bootstrap_intervals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage", nargs="?", default="storage")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--rate", type=float, default=champion.NULL_RATE)
    ap.add_argument("--min-boxes", type=int, default=MIN_TEST_BOXES)
    args = ap.parse_args(argv)
    root = Path(args.storage) / args.profile
    print(
        f"{'task':22s} {'mAP50':>6s} {'image-level':>12s} {'patient-level':>13s} {'images':>6s} {'patients':>8s} "
        f"{'boxes':>5s} {'null@' + format(args.margin, 'g'):>9s} {'resolves':>8s}   reported"
    )
    for task in TASK_NAMES:
        rep = root / "reports" / task
        if not (rep / "detections.parquet").exists():
            print(f"{task:22s} not evaluated")
            continue
        gt, dets = (
            pd.read_parquet(rep / "ground_truth.parquet"),
            pd.read_parquet(rep / "detections.parquet"),
        )
        ids = list(pd.read_parquet(rep / "test_images.parquet")["image_id"])
        images = pd.read_parquet(root / "datasets" / task / "images.parquet")
        groups = patients(images[images["image_id"].isin(ids)])
        classes = TASKS[task].classes
        flat, _ = bootstrap_intervals(
            gt, dets, classes, ids, n_boot=args.resamples, seed=args.seed, min_boxes=1
        )
        clustered, samples = bootstrap_intervals(
            gt,
            dets,
            classes,
            ids,
            n_boot=args.resamples,
            seed=args.seed,
            groups=groups,
            min_boxes=1,
        )
        reported, _ = bootstrap_intervals(
            gt,
            dets,
            classes,
            ids,
            n_boot=args.resamples,
            seed=args.seed,
            groups=groups,
            min_boxes=args.min_boxes,
        )
        f, c, r = (t.set_index("label").loc["(mean AP50)"] for t in (flat, clustered, reported))
        power = champion.split_power(samples, args.margin, args.rate, args.seed)
        n_patients = len({groups.get(i, i) for i in ids})
        print(
            f"{task:22s} {c['estimate']:6.3f} {interval_text(f['ci_low'], f['ci_high']):>12s} "
            f"{interval_text(c['ci_low'], c['ci_high']):>13s} {len(ids):6d} {n_patients:8d} {len(gt):5d} "
            f"{power['null_rate_at_margin']:9.0%} {max(0.0, power['resolvable_margin']):8.3f}   "
            f"{interval_text(r['ci_low'], r['ci_high'], r['note'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
