"""Patient-grouped train/val/test splits that never move a patient as data grows."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def stable_uniform(keys: Iterable, seed: int = 0, salt: str = "split") -> np.ndarray:
    """A uniform number in [0, 1) per key: a pure function of (key, seed, salt)."""
    out = []
    for k in keys:
        digest = hashlib.sha256(f"{salt}:{seed}:{k}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "big") / 2**64)
    return np.asarray(out, dtype=float)


def nih_group(patient_id) -> str:
    """An NIH patient's group key (what a split is assigned to)."""
    return f"nih:{patient_id}"


def shard_of(key: str, shards: int) -> int:
    """A stable shard (0 .. shards - 1) for a key: work split across runs or pods by id."""
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % shards


def assign_splits(patient_ids, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> pd.Series:
    """Split per patient id, as a pure function of (patient id, seed).

    Adding patients never moves an existing one, so the test set stays comparable across retrains.
    Returns a Series aligned with `patient_ids` (its index if it is a Series).
    """
    ids = pd.Series(patient_ids) if not isinstance(patient_ids, pd.Series) else patient_ids
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    uniq = pd.unique(ids.astype(str))
    u = stable_uniform(uniq, seed)
    edges = np.cumsum(fractions)[:-1]
    which = np.searchsorted(edges, u, side="right")
    mapping = dict(zip(uniq, np.asarray(SPLITS)[which]))
    return ids.astype(str).map(mapping).rename("split")


NIH_PNG_SIZE = 1024


def study_images(
    nih_box_ids,
    nih_background_ids,
    nih_patient: dict,
    nih_paths: dict,
    vbd_box_ids,
    vbd_background_ids,
    vbd_images: pd.DataFrame,
) -> tuple[pd.DataFrame, list[str]]:
    """Every image of the study with its patient group and size, and the ids referenced but missing.

    NIH: box images and background images, grouped by patient (Data_Entry's, else the id's first 8
    digits), at 1024 px. VinBigData: annotated and background images that converted fine
    (`vbd_images`: image_id, path, width, height, orig_width, orig_height), each its own group.
    """
    rows, missing = [], []
    nih = [(i, "annotated") for i in sorted(set(nih_box_ids))] + [
        (i, "background") for i in nih_background_ids
    ]
    for image_id, kind in nih:
        if image_id not in nih_paths:
            missing.append(image_id)
            continue
        pid = int(nih_patient[image_id]) if image_id in nih_patient else int(image_id[:8])
        rows.append(
            {
                "image_id": image_id,
                "source": "nih",
                "kind": kind,
                "group": nih_group(pid),
                "path": str(nih_paths[image_id]),
                "width": NIH_PNG_SIZE,
                "height": NIH_PNG_SIZE,
                "orig_width": NIH_PNG_SIZE,
                "orig_height": NIH_PNG_SIZE,
            }
        )
    conv = vbd_images.set_index("image_id")
    vbd = [(i, "annotated") for i in sorted(set(vbd_box_ids))] + [
        (i, "background") for i in vbd_background_ids
    ]
    for image_id, kind in vbd:
        if image_id not in conv.index:
            missing.append(image_id)
            continue
        m = conv.loc[image_id]
        rows.append(
            {
                "image_id": image_id,
                "source": "vinbigdata",
                "kind": kind,
                "group": f"vbd:{image_id}",
                "path": str(m["path"]),
                "width": int(m["width"]),
                "height": int(m["height"]),
                "orig_width": int(m["orig_width"]),
                "orig_height": int(m["orig_height"]),
            }
        )
    return pd.DataFrame(rows), missing
