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
