"""Background ("No Finding") sampling: seeded, and stable as annotated data grows."""

from __future__ import annotations

import pandas as pd

from .splits import stable_uniform


def sample_background(candidates: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """The `n` candidates of lowest seeded hash of `image_id`.

    A pure function of (image id, seed): a larger `n` keeps every earlier pick and adds new ones.
    """
    if n <= 0 or candidates.empty:
        return candidates.iloc[0:0].copy()
    rank = stable_uniform(candidates["image_id"], seed, salt="background")
    order = candidates.assign(_rank=rank).sort_values(["_rank", "image_id"], kind="mergesort")
    return order.head(n).drop(columns="_rank").reset_index(drop=True)
