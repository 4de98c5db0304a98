"""The one way a file or a folder is put in place: written beside its final path under a temporary
name, then renamed over it (`os.replace`, atomic on one filesystem). A reader sees the old content
or the new, never half of it; a write that fails leaves nothing behind. `storage.Storage`, the sample
data, the exports, the drops and the tools' files all write through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write; it becomes `final` only if the block
    finishes (with permissions `mode` when given, e.g. 0o600 for a file holding a secret)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=final.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; it replaces the folder `final` (if any) only if the
    block finishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
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


def place(built: str | os.PathLike, final: str | os.PathLike) -> Path:
    """A finished file or folder, built on the same filesystem (a temporary folder beside
    `final`), put in `final`'s place by one rename (an exporter's output folder, say)."""
    os.replace(built, final)
    return Path(final)


def write_bytes(final: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    with atomic_path(final, mode) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    return write_bytes(final, text.encode("utf-8"), mode)


def copy_file(src: str | os.PathLike, final: str | os.PathLike) -> Path:
    """`src` copied to `final` whole (a reader never sees a partial copy)."""
    with atomic_path(final) as tmp:
        shutil.copyfile(src, tmp)
    return Path(final)
