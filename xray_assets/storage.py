"""The one storage helper: every artefact the graph writes goes through here, atomically.

The root is a local folder or an object-store URL (`s3://bucket/prefix`, through fsspec/UPath; the
endpoint comes from `AWS_ENDPOINT_URL` for S3-compatible servers).

Locally a write goes through `core.atomic` (a temp file in the same folder, then renamed over). On an object store a
table or report is written to a local temp file and uploaded in one PUT, so readers see the whole
object or none. Work that needs real files (DICOM conversion, YOLO datasets, ultralytics training
and tuning, plots of test images) runs in a local *mirror* of the root: `local()` downloads a file
or folder (and the images a dataset links to) when the local copy is missing or older,
`workdir()` and `atomic_dir()` upload what the block wrote when it finishes. The mirror sits at the
same path on every machine (`XRAY_CACHE_DIR`, default `~/.cache/xray-assets/mirror`), so the
absolute paths a dataset lists are valid on whichever pod reads it.

A local copy is current when its size and modification time equal the object's (the time is set
from the object's `LastModified` on download and after upload).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

import pandas as pd

from .core.atomic import atomic_dir, atomic_path

LINKS_FILE = ".xray-links.json"  # a pushed folder's symlinks (relative path -> target): objects cannot be links


def is_url(root: str | os.PathLike) -> bool:
    return "://" in str(root)


def _upath(url: str):
    from upath import UPath

    opts: dict[str, Any] = {
        "use_listings_cache": False
    }  # other machines write here too: always ask
    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        opts["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    return UPath(url, **opts)


def mirror_root(url: str) -> Path:
    """Where the local mirror of an object-store root lives (the same path on every machine)."""
    from .core.offline import cache_dir

    base = Path(os.environ.get("XRAY_CACHE_DIR") or cache_dir() / "mirror")
    scheme, rest = url.split("://", 1)
    return base.expanduser().resolve() / scheme / rest.strip("/")


def _stamp(info: dict) -> float | None:
    value = (
        info.get("LastModified")
        or info.get("mtime")
        or info.get("updated")
        or info.get("last_modified")
    )
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) else None


def _current(local: Path, info: dict) -> bool:
    """Is the local file the same version as the object described by `info`?"""
    if local.is_symlink() or not local.is_file():
        return False
    st = local.stat()
    stamp = _stamp(info)
    return st.st_size == int(info.get("size") or 0) and (
        stamp is None or abs(st.st_mtime - stamp) < 1e-3
    )


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file and file link under `root`, links not followed."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p


class Storage:
    """Files under one root (a folder or an object-store URL), written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.remote = is_url(root)
        if self.remote:
            self.url = str(root).rstrip("/")
            self.root = _upath(self.url)
            self.fs = self.root.fs
            self.mirror = mirror_root(self.url)
        else:
            self.root = Path(root).resolve()
            self.url = str(self.root)
            self.mirror = self.root

    @classmethod
    def for_profile(cls, root: str | os.PathLike, profile: str) -> "Storage":
        """A profile's artefacts under a storage root: <root>/<profile>/."""
        return cls(f"{str(root).rstrip('/')}/{profile}" if is_url(root) else Path(root) / profile)

    # -- where things are ----------------------------------------------------------------------
    def local_path(self, *parts: str) -> Path:
        """Where `parts` is (or will be) on this machine: under the root, or under the mirror."""
        return self.mirror.joinpath(*parts)

    def dir(self, *parts: str) -> Path:
        """A local working folder (created). On an object store nothing in it is uploaded by itself:
        use `workdir()` for work whose results must be kept."""
        p = self.local_path(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def uri(self, *parts: str) -> str:
        """`parts` as a URI for other tools (MLflow's artefact location): file:// or the object URL."""
        if self.remote:
            return "/".join([self.url, *parts])
        return self.dir(*parts).as_uri()

    def _key(self, *parts: str) -> str:
        return "/".join([self.root.path.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        if self.remote:
            return self.fs.exists(self._key(*parts))
        return self.root.joinpath(*parts).exists()

    def names(self, *parts: str) -> set[str]:
        """Names of the files directly inside folder `parts` (empty if there is none)."""
        return self._children(parts, folders=False)

    def subfolders(self, *parts: str) -> set[str]:
        """Names of the folders directly inside folder `parts` (empty if there is none)."""
        return self._children(parts, folders=True)

    def _children(self, parts: tuple[str, ...], folders: bool) -> set[str]:
        if not self.remote:
            p = self.root.joinpath(*parts)
            return (
                {c.name for c in p.iterdir() if (c.is_dir() if folders else c.is_file())}
                if p.is_dir()
                else set()
            )
        kind = "directory" if folders else "file"
        try:
            return {
                PurePosixPath(i["name"]).name
                for i in self.fs.ls(self._key(*parts), detail=True)
                if i.get("type") == kind
            }
        except FileNotFoundError:
            return set()

    # -- the local mirror of an object store ---------------------------------------------------
    def local(self, *parts: str) -> Path:
        """A local path to the file or folder `parts`, downloaded first if the root is remote and the
        local copy is missing or out of date. A folder's links are recreated and, where they point
        into the mirror, their targets fetched too."""
        p = self.local_path(*parts)
        if not self.remote:
            return p
        key = self._key(*parts)
        try:
            info = self.fs.info(key)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.url}/{'/'.join(parts)}: not in the storage root"
            ) from None
        if info.get("type") == "directory":
            self._pull_dir(p, key)
        elif not _current(p, info):
            self._download([(key, p, info)])
        return p

    def localise(self, paths: Iterable[str | os.PathLike]) -> int:
        """Make sure each of `paths` that lies in the mirror is there and current (one listing per
        folder). Paths outside the storage (input data) are left alone. Returns the files fetched."""
        if not self.remote:
            return 0
        by_parent: dict[PurePosixPath, set[str]] = defaultdict(set)
        for s in paths:
            try:
                rel = PurePosixPath(Path(s).relative_to(self.mirror).as_posix())
            except ValueError:
                continue
            by_parent[rel.parent].add(rel.name)
        todo = []
        for parent, wanted in by_parent.items():
            key = self._key(*parent.parts)
            try:
                listing = {
                    PurePosixPath(i["name"]).name: i
                    for i in self.fs.ls(key, detail=True)
                    if i.get("type") == "file"
                }
            except FileNotFoundError:
                continue  # missing images are the dataset checks' business
            for name in sorted(wanted):
                info, lp = listing.get(name), self.mirror.joinpath(*parent.parts, name)
                if info is not None and not _current(lp, info):
                    todo.append((info["name"], lp, info))
        self._download(todo)
        return len(todo)

    def push(self, *parts: str, exact: bool = False) -> int:
        """Upload the local file or folder `parts` where the object store differs. A folder's links
        go into `.xray-links.json`. `exact`: also delete objects the local folder no longer has.
        Returns the files uploaded (0 on a local root, where there is nothing to do)."""
        if not self.remote:
            return 0
        lroot, key = self.local_path(*parts), self._key(*parts)
        if lroot.is_file() and not lroot.is_symlink():
            try:
                info = self.fs.info(key)
            except FileNotFoundError:
                info = None
            if info is not None and _current(lroot, info):
                return 0
            self._upload([(lroot, key)])
            return 1
        files, links = {}, {}
        for rel, p in _walk(lroot):
            if p.is_symlink():
                links[rel] = os.readlink(p)
            elif rel != LINKS_FILE:
                files[rel] = p
        remote = self._listing(key)
        todo = [
            (p, f"{key}/{rel}")
            for rel, p in sorted(files.items())
            if rel not in remote or not _current(p, remote[rel])
        ]
        self._upload(todo)
        if links or LINKS_FILE in remote:
            self.fs.pipe_file(f"{key}/{LINKS_FILE}", json.dumps(links, sort_keys=True).encode())
        if exact:
            extras = [
                remote[rel]["name"] for rel in remote if rel not in files and rel != LINKS_FILE
            ]
            if extras:
                self.fs.rm(extras)
        return len(todo)

    @contextlib.contextmanager
    def workdir(self, *parts: str, pull: bool = True) -> Iterator[Path]:
        """A local folder for work on real files. On an object store it starts as a copy of the
        stored folder (unless `pull=False`) and what the block wrote is uploaded when it finishes."""
        yield (
            self.local(*parts) if pull and self.remote and self.exists(*parts) else self.dir(*parts)
        )
        self.push(*parts)

    def _listing(self, key: str) -> dict[str, dict]:
        """relative path -> info of every object under the folder `key`."""
        try:
            found = self.fs.find(key, detail=True)
        except FileNotFoundError:
            return {}
        return {
            name[len(key) :].lstrip("/"): info
            for name, info in found.items()
            if info.get("type") != "directory" and name.startswith(key + "/")
        }

    def _pull_dir(self, lroot: Path, key: str) -> None:
        remote = self._listing(key)
        links = (
            json.loads(self.fs.cat_file(remote.pop(LINKS_FILE)["name"]))
            if LINKS_FILE in remote
            else {}
        )
        if lroot.exists():
            for rel, p in list(_walk(lroot)):
                if rel not in remote and rel not in links:
                    p.unlink()  # a mirror: what the store no longer has goes here too
        self._download(
            [
                (info["name"], lroot / rel, info)
                for rel, info in sorted(remote.items())
                if not _current(lroot / rel, info)
            ]
        )
        for rel, target in links.items():
            lp = lroot / rel
            if lp.is_symlink() and os.readlink(lp) == target:
                continue
            lp.parent.mkdir(parents=True, exist_ok=True)
            if lp.is_symlink() or lp.exists():
                lp.unlink()
            os.symlink(target, lp)
        self.localise(links.values())

    def _download(self, items: list[tuple[str, Path, dict]]) -> None:
        if not items:
            return
        with contextlib.ExitStack() as stack:  # each file replaced whole, or none if the get fails
            tmps = [stack.enter_context(atomic_path(lp)) for _, lp, _ in items]
            self.fs.get([k for k, _, _ in items], [str(t) for t in tmps])
            for (_, _, info), tmp in zip(items, tmps):
                stamp = _stamp(info)
                if stamp is not None:
                    os.utime(tmp, (stamp, stamp))

    def _upload(self, items: list[tuple[Path, str]]) -> None:
        if not items:
            return
        self.fs.put([str(p) for p, _ in items], [k for _, k in items])
        # stamp the local copies with the objects' times, so they count as current
        parents = {k.rsplit("/", 1)[0] for _, k in items}
        infos = {i["name"]: i for parent in parents for i in self.fs.ls(parent, detail=True)}
        for p, k in items:
            stamp = _stamp(infos.get(k, {}))
            if stamp is not None:
                os.utime(p, (stamp, stamp))

    # -- atomic writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self, *parts: str) -> Iterator[Path]:
        """Yield a temp path to write; it becomes `parts` only if the block finishes."""
        if not self.remote:
            with atomic_path(self.root.joinpath(*parts)) as tmp:
                yield tmp
            return
        final = self._key(*parts)
        fd, name = tempfile.mkstemp(prefix=".xray-upload-", suffix=Path(parts[-1]).suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            self.fs.put_file(str(tmp), final)  # one PUT: the whole object or nothing
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def atomic_dir(self, *parts: str) -> Iterator[Path]:
        """Yield a temp folder; it replaces the folder `parts` only if the block finishes.

        On an object store the finished folder replaces the mirror's copy, then is uploaded file by
        file (objects it no longer has are deleted last); a failed block uploads nothing."""
        with atomic_dir(self.local_path(*parts)) as tmp:
            yield tmp
        self.push(*parts, exact=True)

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
