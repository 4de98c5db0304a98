"""The one storage helper: every artefact the graph writes goes through here, atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


class Storage:
    """Files under one root. Writes go to a temp file in the same folder, then `os.replace`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def exists(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).exists()

    # -- atomic writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self, *parts: str) -> Iterator[Path]:
        """Yield a temp path to write; it becomes `parts` only if the block finishes."""
        yield from _atomic(self.path(*parts))

    @contextlib.contextmanager
    def atomic_dir(self, *parts: str) -> Iterator[Path]:
        """Yield a temp folder; it replaces the folder `parts` only if the block finishes."""
        final = self.path(*parts)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            yield tmp
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def write_parquet(self, df: pd.DataFrame, *parts: str) -> Path:
        with self.atomic(*parts) as tmp:
            df.to_parquet(tmp, index=False)
        return self.root.joinpath(*parts)

    def read_parquet(self, *parts: str) -> pd.DataFrame:
        return pd.read_parquet(self.root.joinpath(*parts))

    def write_json(self, obj: Any, *parts: str) -> Path:
        return self.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), *parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.root.joinpath(*parts).read_text())

    def write_text(self, text: str, *parts: str) -> Path:
        return self.write_bytes(text.encode("utf-8"), *parts)

    def write_bytes(self, data: bytes, *parts: str) -> Path:
        with self.atomic(*parts) as tmp:
            tmp.write_bytes(data)
        return self.root.joinpath(*parts)

    def copy_in(self, src: str | os.PathLike, *parts: str) -> Path:
        with self.atomic(*parts) as tmp:
            shutil.copyfile(src, tmp)
        return self.root.joinpath(*parts)


def _atomic(final: Path) -> Iterator[Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=final.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Atomic write of any path (for code outside a Storage, e.g. the sample-data generator)."""
    yield from _atomic(Path(final))
