"""The one storage helper: every artefact the graph writes goes through here, atomically.

The root is a local folder or an object-store URL (`s3://bucket/prefix`, through fsspec/UPath; the
endpoint comes from `AWS_ENDPOINT_URL` for S3-compatible servers). Locally a write goes to a temp
file in the same folder, then `os.replace`; on an object store it is written to a local temp file and
uploaded in one PUT, so readers see the whole object or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def is_url(root: str | os.PathLike) -> bool:
    return "://" in str(root)


def _upath(url: str):
    from upath import UPath

    opts = {}
    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        opts["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return UPath(url, **opts)


class Storage:
    """Files under one root (a folder or an object-store URL), written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.remote = is_url(root)
        self.root = _upath(str(root).rstrip("/")) if self.remote else Path(root).resolve()

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        if not self.remote:
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def dir(self, *parts: str) -> Path:
        """A local working folder (training, conversion and datasets need real files)."""
        if self.remote:
            raise NotImplementedError(
                f"{self.root}: this step needs a local folder ({'/'.join(parts)}); object storage holds the "
                "tables and reports of the ingest stage. Run the later stages with a local XRAY_STORAGE_DIR.")
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def exists(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).exists()

    # -- atomic writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self, *parts: str) -> Iterator[Path]:
        """Yield a temp path to write; it becomes `parts` only if the block finishes."""
        if not self.remote:
            yield from _atomic(self.path(*parts))
            return
        final = self.root.joinpath(*parts)
        fd, name = tempfile.mkstemp(prefix=".xray-upload-", suffix=Path(parts[-1]).suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            final.fs.put_file(str(tmp), final.path)   # one PUT: the whole object or nothing
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def atomic_dir(self, *parts: str) -> Iterator[Path]:
        """Yield a temp folder; it replaces the folder `parts` only if the block finishes."""
        if self.remote:
            self.dir(*parts)   # raises: a dataset folder is local work
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
        p = self.root.joinpath(*parts)
        if self.remote:
            with p.open("rb") as fh:
                return pd.read_parquet(fh)
        return pd.read_parquet(p)

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
