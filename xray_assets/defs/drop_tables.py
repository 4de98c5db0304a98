"""The accepted annotation drops as the label assets, the datasets and the annotation loop read
them: which drops are committed, their tables and their images. It imports none of the assets, so
every asset module can use it (the drops' own asset and sensors live in `drops.py`)."""

from pathlib import Path

import dagster as dg
import pandas as pd

from ..core import layout
from ..storage import Storage


def committed(shared: Storage) -> list[str]:
    """Partition keys of the accepted drops (those whose commit is written), oldest first."""
    keys = [
        k for k in sorted(shared.subfolders(*layout.DROPS)) if shared.exists(*layout.drop_commit(k))
    ]
    return sorted(
        keys, key=lambda k: (shared.read_json(*layout.drop_commit(k)).get("accepted_at", ""), k)
    )


def read_drop_tables(
    shared: Storage, table: str, exclude: str | None = None, keys: list[str] | None = None
) -> pd.DataFrame:
    """`table` (labels, boxes or annotations) of every committed drop (or of `keys`, committed drops
    listed once by the caller), with `source` = the drop's key."""
    parts = [
        shared.read_parquet(*layout.drop_table(k, table)).assign(source=k)
        for k in (committed(shared) if keys is None else keys)
        if k != exclude and shared.exists(*layout.drop_table(k, table))
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def drop_image_paths(shared: Storage, folder: str) -> dict[str, Path]:
    """file name -> local path of the committed drops' images (`images`) or DICOMs (`dicom`),
    fetched into the mirror when the storage root is an object store."""
    out: dict[str, Path] = {}
    for k in committed(shared):
        if shared.exists(*layout.drop(k, folder)):
            for p in sorted(shared.local(*layout.drop(k, folder)).iterdir()):
                out.setdefault(p.name, p)
    return out


def nih_image_index(data_dir: Path, shared: Storage | None = None) -> dict[str, Path]:
    """image file name -> path, over `images_001/images` .. `images_012/images` (or a flat `images/`),
    then the accepted drops' images (`shared`: the storage shared by the profiles)."""
    index: dict[str, Path] = {}
    for pattern in ("images_*/images/*.png", "images/*.png"):
        for p in data_dir.glob(pattern):
            index.setdefault(p.name, p)
    if shared is not None:
        for name, p in drop_image_paths(shared, "images").items():
            index.setdefault(name, p)
    return index


#: a label asset's metadata entry listing the committed drops its run read (the `label_drops`
#: sensor compares it with the committed drops)
DROPS_READ = "drops_read"


def drops_read(keys: list[str]) -> dict:
    """The label assets' metadata entries for the drops a run read."""
    return {DROPS_READ: dg.MetadataValue.json(list(keys)), "drops": len(keys)}
