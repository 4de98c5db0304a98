"""majority_radiologist (vectorised) against a row-by-row loop like the study's, and reader_agreement
(every reader pair's IoUs at once, one pass of greedy matching) against the per-group IoU-matrix
matching it replaced (the tests' reference), same table, same run.

Uses VinBigData's full annotation table from XRAY_REAL_DATA when set, else the sample data's.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd

from xray_assets.core.classes import VINBIGDATA_TO_UNITED
from xray_assets.core.consensus import majority_radiologist, reader_agreement
from xray_assets.core.labels import read_vinbigdata_annotations


def loop_baseline(ann: pd.DataFrame) -> pd.DataFrame:
    """The study's approach: per image, per class, count each radiologist's boxes in Python."""
    keep = []
    for image_id in ann["image_id"].unique():
        rows = ann[ann["image_id"] == image_id]
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for _, r in rows.iterrows():
            u = VINBIGDATA_TO_UNITED.get(r["class_id"])
            if u:
                counts[u][r["rad_id"]] += 1
        for u, per_rad in counts.items():
            best = sorted(per_rad.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            for idx, r in rows.iterrows():
                if VINBIGDATA_TO_UNITED.get(r["class_id"]) == u and r["rad_id"] == best:
                    keep.append(idx)
    return ann.loc[sorted(keep)]


def _timed(fn, *args):
    """(fn(*args), its wall seconds)."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> list[dict]:
    real = os.environ.get("XRAY_REAL_DATA")
    src = (
        Path(real) / "vinbigdata" / "train_reconstructed.csv"
        if real and Path(real).is_dir()
        else Path(os.environ.get("XRAY_DATA_DIR", "data/sample")) / "vinbigdata" / "train.csv"
    )
    ann = read_vinbigdata_annotations(src)
    fast, t_fast = _timed(majority_radiologist, ann)
    slow, t_slow = _timed(loop_baseline, ann)
    assert sorted(map(tuple, fast.astype(str).to_numpy().tolist())) == sorted(
        map(tuple, slow.astype(str).to_numpy().tolist())
    ), "vectorised and loop disagree"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_consensus_splits_metrics import _agreement_per_group

    agreement, t_agree = _timed(reader_agreement, ann)
    reference, t_ref = _timed(_agreement_per_group, ann)
    pd.testing.assert_frame_equal(agreement, reference, rtol=1e-12)
    return [
        {
            "benchmark": "reader_agreement",
            "rows": len(ann),
            "ours_s": t_agree,
            "baseline_s": t_ref,
            "baseline": f"per (image, class) and reader pair, IoU matrix, {len(ann)} rows",
            "speedup": t_ref / t_agree,
            "source": str(src),
        },
        {
            "benchmark": "majority_radiologist",
            "rows": len(ann),
            "ours_s": t_fast,
            "baseline_s": t_slow,
            "baseline": f"row-by-row loop, {len(ann)} rows",
            "speedup": t_slow / t_fast,
            "source": str(src),
        },
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
