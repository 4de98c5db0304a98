"""Which label-only NIH image a radiologist should box next, per task.

Candidates: NIH images whose Data_Entry lists a finding of the task with no box of that finding on
the image (`yolo_dataset.unboxed_findings`, in the task's vocabulary): label-only images (no box at
all) and **partially boxed** ones (a box for one finding, another listed finding unboxed). Partially
boxed images come first only where the profile leaves them out of training
(`exclude_unboxed_findings`), so that annotating one returns a whole image; by default they train with
the unboxed finding taught as background, and the active-learning simulation measured that putting
them first then does worse than random (`benchmarks/bench_active_learning.py`, docs/science.md), so
they are ranked by the score like any other candidate.

Acquisition score of an image, from the champion's detections at the AP floor (one detection path,
`core/detection`) and the known label:

    score = mean over its listed unboxed findings c of (1 - p_c)  +  LAMBDA * H

- `p_c`: the champion's highest confidence for the task class of c on the image (0 when it finds
  nothing). A listed finding the model does not find (p_c near 0) is worth more than one it finds
  confidently: that is where it learns least.
- `H`: the model's own uncertainty, the mean binary entropy (bits, 0..1) of its detections' scores
  above `FLOOR_FOR_ENTROPY`; 0 when it has none.

The score is in 0..1 + LAMBDA. Ranking: (partially boxed first, where the rule says so), then
score, highest first, ties by image id. **The test split stays representative:** train/val patients
are ranked by acquisition; test patients are never ranked, only drawn at random (seeded) at a fixed
share of a batch, so the evaluation is not biased towards hard cases.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .classes import TaskSpec
from .splits import assign_splits, nih_group, stable_uniform
from .yolo_dataset import unboxed_findings

LAMBDA = 0.5
FLOOR_FOR_ENTROPY = 0.05
#: the share of a batch drawn at random from test patients' candidates
TEST_SHARE = 0.1
SCORE_COLUMNS = ["image_id", "model_version", "score", "missed", "uncertainty", "detections"]
QUEUE_COLUMNS = [
    "image_id",
    "patient_id",
    "split",
    "findings",
    "kind",
    "selection",
    "score",
    "missed",
    "uncertainty",
    "rank",
]


def candidates(
    labels: pd.DataFrame, boxes: pd.DataFrame, task: TaskSpec, exclude: set[str] = frozenset()
) -> pd.DataFrame:
    """image_id, patient_id, findings (the task's classes listed without a box), kind
    (`partial`: the image has boxes of another finding; `label_only`: none). `exclude`: images
    of pending batches, never proposed twice."""
    unboxed = unboxed_findings(labels, boxes, task)
    unboxed = unboxed[~unboxed["image_id"].isin(set(exclude))]
    if unboxed.empty:
        return pd.DataFrame(columns=["image_id", "patient_id", "findings", "kind"])
    unboxed = unboxed.assign(task_class=unboxed["finding"].map(task.label_map))
    grouped = unboxed.groupby("image_id")["task_class"].agg(lambda s: sorted(set(s)))
    out = grouped.rename("findings").reset_index()
    patient = labels.drop_duplicates("image_id").set_index("image_id")["patient_id"]
    out["patient_id"] = out["image_id"].map(patient).astype("int64")
    has_box = set(boxes["image_id"])
    out["kind"] = np.where(out["image_id"].isin(has_box), "partial", "label_only")
    return out[["image_id", "patient_id", "findings", "kind"]]


def patient_splits(patient_ids, fractions, seed: int) -> dict:
    """patient_id -> split by the study's own rule (`splits.assign_splits` of the patient's group),
    for candidates that are not in the study's split table yet."""
    ids = list(patient_ids)
    return dict(zip(ids, assign_splits([nih_group(p) for p in ids], fractions, seed)))


def _entropy(p: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))) if len(p) else 0.0


def score(findings: list[str], detections: pd.DataFrame) -> tuple[float, float, float]:
    """(score, missed, uncertainty) of one image: `detections` are its boxes (label, score) at the
    AP floor, in the task's classes."""
    best = detections.groupby("label")["score"].max() if len(detections) else pd.Series()
    missed = float(np.mean([1.0 - float(best.get(c, 0.0)) for c in findings])) if findings else 0.0
    confident = detections["score"].to_numpy(float) if len(detections) else np.zeros(0)
    uncertainty = _entropy(confident[confident > FLOOR_FOR_ENTROPY])
    return missed + LAMBDA * uncertainty, missed, uncertainty


def score_images(cands: pd.DataFrame, detections: pd.DataFrame, model_version: str) -> pd.DataFrame:
    """The score of every candidate from its detections (one row per image, SCORE_COLUMNS)."""
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    rows = []
    for image_id, findings in zip(cands["image_id"], cands["findings"]):
        dets = by_image.get(image_id, detections.iloc[0:0])
        s, missed, unc = score(list(findings), dets)
        rows.append((image_id, str(model_version), s, missed, unc, len(dets)))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def to_score(cands: pd.DataFrame, cache: pd.DataFrame, model_version: str) -> pd.DataFrame:
    """The candidates without a cached score for this model version (new candidates, or all of
    them for a new champion)."""
    if cache.empty:
        return cands
    done = set(cache.loc[cache["model_version"] == str(model_version), "image_id"])
    return cands[~cands["image_id"].isin(done)]


def rank(
    cands: pd.DataFrame,
    scores: pd.DataFrame,
    splits: pd.Series,
    seed: int = 0,
    partial_first: bool = False,
) -> pd.DataFrame:
    """The queue (QUEUE_COLUMNS): train/val candidates with a score, by score (partially boxed
    first when `partial_first`: where the profile leaves them out of training, so that annotating
    one returns a whole image); test candidates with a random key instead (selection `random
    (test)`), never ranked by the model. `splits`: patient_id -> split (the study's rule for every
    patient)."""
    q = cands.merge(
        scores[["image_id", "score", "missed", "uncertainty"]], on="image_id", how="left"
    )
    q["split"] = q["patient_id"].map(splits)
    test = q["split"] == "test"
    q["selection"] = np.where(test, "random (test)", "acquisition")
    key = stable_uniform(q["image_id"], seed, salt="queue")
    q.loc[test, ["score", "missed", "uncertainty"]] = math.nan
    q["_tier"] = np.where((q["kind"] == "partial") & partial_first, 0, 1)
    q["_key"] = np.where(test, key, -q["score"].fillna(-math.inf))
    ranked = q[~test & q["score"].notna()].sort_values(["_tier", "_key", "image_id"])
    drawn = q[test].sort_values(["_key", "image_id"])
    out = pd.concat([ranked, drawn], ignore_index=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out[QUEUE_COLUMNS]


def batch(
    queue: pd.DataFrame,
    size: int,
    quota: dict[str, int] | None = None,
    test_share: float = TEST_SHARE,
) -> pd.DataFrame:
    """The top `size` of the queue: at most one image per patient, at most `quota[c]` images listing
    finding c (default: no quota), and round(size * test_share) drawn from the test candidates."""
    n_test = int(round(size * test_share))
    picked, patients, per_finding = [], set(), {}
    for part, limit in (
        (queue[queue["selection"] == "acquisition"], size - n_test),
        (queue[queue["selection"] != "acquisition"], n_test),
    ):
        taken = 0
        for row in part.itertuples(index=False):
            if taken >= limit:
                break
            if row.patient_id in patients:
                continue
            if quota and any(per_finding.get(c, 0) >= quota.get(c, size) for c in row.findings):
                continue
            picked.append(row)
            patients.add(row.patient_id)
            for c in row.findings:
                per_finding[c] = per_finding.get(c, 0) + 1
            taken += 1
    return pd.DataFrame(picked, columns=queue.columns).reset_index(drop=True)
