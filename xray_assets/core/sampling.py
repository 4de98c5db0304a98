"""Background ("No Finding") sampling: seeded, and stable as annotated data grows."""

from __future__ import annotations

import pandas as pd

from .splits import stable_uniform


def sample_background(
    candidates: pd.DataFrame, n: int, seed: int = 0, previous: pd.DataFrame | None = None
) -> pd.DataFrame:
    """`n` background images: the earlier picks that are still candidates first, then the
    candidates of lowest seeded hash of `image_id`.

    Without `previous` it is a pure function of (image ids, seed), and a larger `n` keeps every
    earlier pick. With `previous` (the last draw), new "No Finding" images arriving with a low hash
    never push out an image that was already picked.
    """
    if n <= 0 or candidates.empty:
        return candidates.iloc[0:0].copy()
    rank = stable_uniform(candidates["image_id"], seed, salt="background")
    ranked = candidates.assign(_rank=rank)
    if previous is not None and len(previous):
        ranked["_rank"] = ranked["_rank"].where(
            ~ranked["image_id"].isin(previous["image_id"]), -1.0
        )
    order = ranked.sort_values(["_rank", "image_id"], kind="mergesort")
    return order.head(n).drop(columns="_rank").reset_index(drop=True)
