"""The graph before training, at the study's real table sizes: how each asset's cost grows.

The data are the genuine tables (XRAY_REAL_DATA, a folder of the genuine public files): the Data_Entry subset
(59,824 images of 18,897 patients), the real box list and the full VinBigData table (67,914 rows,
15,000 images). Images are placeholders the benchmark generates: a flat 1024 x 1024 PNG per NIH
image (hard links of one file) and a DICOM per VinBigData image at its real dimensions (train_meta's
height and width; 16-bit, deflated: the decoder inflates and converts every pixel, as it would an
uncompressed original, while the files stay small; one file per distinct size, hard-linked).

Each fraction (XRAY_BENCH_GRAPH_FRACTIONS, default 1/8, 1/2 and 1) keeps NIH patients and
VinBigData images whose stable hash falls below it, then runs every asset up to and including
`yolo_datasets` under the study profile, in order, in this process (as the tests call them):
wall time and peak memory (this process and its conversion workers, sampled every 50 ms) per asset.
Rows compare each fraction with the smallest: the time ratio against the size ratio says whether an
asset grows faster than linearly. Needs about 120 MB for the DICOMs and minutes per fraction.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ASSETS = [
    ("nih_labels", None),
    ("nih_boxes", None),
    ("vinbigdata_annotations", None),
    ("vinbigdata_images", "shards"),
    ("vinbigdata_boxes", None),
    ("background_samples", None),
    ("patient_splits", None),
    ("yolo_datasets", "tasks"),
]


def real_dir() -> Path:
    given = os.environ.get("XRAY_REAL_DATA")
    return (
        Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    )


def fractions() -> list[float]:
    raw = os.environ.get("XRAY_BENCH_GRAPH_FRACTIONS") or "0.125,0.5,1"
    return sorted(float(x) for x in raw.split(","))


def _keep(keys, fraction: float) -> np.ndarray:
    from xray_assets.core.splits import stable_uniform

    return stable_uniform(keys, 0, salt="bench-graph") < fraction


def _placeholder(job: tuple) -> None:
    """One deflated 16-bit DICOM of the given size (a flat mid-grey radiograph)."""
    import copy

    import pydicom

    template, path, h, w = job
    ds = copy.copy(pydicom.dcmread(template))
    ds.Rows, ds.Columns = int(h), int(w)
    ds.PixelData = np.full((int(h), int(w)), 2000, np.uint16).tobytes()
    tmp = Path(f"{path}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def build_pool(root: Path) -> tuple[Path, dict]:
    """Every distinct VinBigData size as one DICOM under root/sizes/ (2 processes), and a flat PNG:
    (the PNG, {(h, w): DICOM})."""
    from concurrent.futures import ProcessPoolExecutor

    import cv2
    import pandas as pd

    from xray_assets.core.synthetic import write_dicom

    meta = pd.read_csv(real_dir() / "vinbigdata" / "train_meta.csv")
    sizes = sorted(set(zip(meta["height"], meta["width"])))
    folder = root / "sizes"
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "template.dicom"
    variant = {
        "photometric": "MONOCHROME2",
        "bits_stored": 12,
        "rescale": (1.0, 0.0),
        "voi": True,
        "syntax": "deflated",
    }
    write_dicom(template, np.full((8, 8), 0.5, np.float32), variant, serial=0)
    paths = {s: folder / f"{s[0]}x{s[1]}.dicom" for s in sizes}
    jobs = [(str(template), str(p), h, w) for (h, w), p in paths.items() if not p.exists()]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_placeholder, jobs, chunksize=32))
    png = root / "flat.png"
    cv2.imwrite(str(png), np.full((1024, 1024), 128, np.uint8))
    return png, paths


def build_data(root: Path, fraction: float, png: Path, dicoms: dict) -> dict:
    """The data folder of one fraction (tables cut by patient / image, images hard-linked)."""
    import shutil

    import pandas as pd

    real = real_dir()
    nih, vbd = root / "nih", root / "vinbigdata"
    (nih / "images_001" / "images").mkdir(parents=True)
    (vbd / "train").mkdir(parents=True)
    entry_path = real / "nih" / "Data_Entry_2017_subset_reconstructed.csv"
    entry = pd.read_csv(entry_path)
    keep = entry[_keep(entry["Patient ID"].astype(str), fraction)]
    # the file's own bytes for the rows kept (header and trailing commas as they are)
    lines = entry_path.read_text().splitlines()
    kept_ids = set(keep["Image Index"])
    (nih / "Data_Entry_2017.csv").write_text(
        "\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in kept_ids]) + "\n"
    )
    box_lines = (real / "nih" / "BBox_List_2017.csv").read_text().splitlines()
    (nih / "BBox_List_2017.csv").write_text(
        "\n".join([box_lines[0]] + [ln for ln in box_lines[1:] if ln.split(",", 1)[0] in kept_ids])
        + "\n"
    )
    for name in ("train_val_list.txt", "test_list.txt"):
        shutil.copyfile(real / "nih" / name, nih / name)
    for image_id in kept_ids:
        os.link(png, nih / "images_001" / "images" / image_id)
    table_path = real / "vinbigdata" / "train_reconstructed.csv"
    table = pd.read_csv(table_path)
    meta = pd.read_csv(real / "vinbigdata" / "train_meta.csv").set_index("image_id")
    images = sorted(set(table["image_id"]))
    images = [i for i, k in zip(images, _keep(images, fraction)) if k]
    table[table["image_id"].isin(set(images))].to_csv(vbd / "train.csv", index=False)
    for image_id in images:
        h, w = meta.loc[image_id, ["height", "width"]]
        os.link(dicoms[(h, w)], vbd / "train" / f"{image_id}.dicom")
    return {
        "nih_images": len(kept_ids),
        "nih_patients": keep["Patient ID"].nunique(),
        "vbd_images": len(images),
    }


class PeakMemory:
    """The largest resident memory of this process plus its children, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def _sample(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker that just ended
                pass
        return total

    def __enter__(self):
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def run_graph(data: Path, storage: Path) -> dict[str, tuple[float, float]]:
    """asset -> (seconds, peak MB) for every asset of the graph before training, in order."""
    import dagster as dg

    from xray_assets.defs import datasets, nih, vinbigdata
    from xray_assets.defs.resources import SHARD_PARTITIONS, TASK_PARTITIONS, XrayResource

    xray = XrayResource(data_dir=str(data), storage_dir=str(storage), profile="study")
    modules = (nih, vinbigdata, datasets)
    out = {}
    for name, parts in ASSETS:
        asset = next(getattr(m, name) for m in modules if hasattr(m, name))
        keys = {
            "shards": SHARD_PARTITIONS.get_partition_keys(),
            "tasks": TASK_PARTITIONS.get_partition_keys(),
        }.get(parts, [None])
        with PeakMemory() as mem:
            t = time.perf_counter()
            for key in keys:
                asset(dg.build_asset_context(resources={"xray": xray}, partition_key=key))
            seconds = time.perf_counter() - t
        out[name] = (seconds, mem.peak / 2**20)
        print(f"  {name}: {seconds:.1f} s, peak {mem.peak / 2**20:.0f} MB", flush=True)
    return out


def main() -> list[dict]:
    fr = fractions()
    results, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        png, dicoms = build_pool(tmp / "pool")
        print(
            f"placeholders: {len(dicoms)} DICOM sizes in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        for f in fr:
            data = tmp / f"data-{f:g}"
            sizes[f] = build_data(data, f, png, dicoms)
            print(f"fraction {f:g}: {sizes[f]}", flush=True)
            results[f] = run_graph(data, tmp / f"storage-{f:g}")
            import shutil

            shutil.rmtree(data)
            shutil.rmtree(tmp / f"storage-{f:g}")
    base = fr[0]
    rows = []
    for f in fr:
        total = sum(s for s, _ in results[f].values())
        peak = max(m for _, m in results[f].values())
        detail = ", ".join(f"{k} {s:.1f} s / {m:.0f} MB" for k, (s, m) in results[f].items())
        growth = sizes[f]["vbd_images"] / max(1, sizes[base]["vbd_images"])
        base_total = sum(s for s, _ in results[base].values())
        rows.append(
            {
                "benchmark": f"graph before training x{f:g}",
                "ours_s": total,
                "baseline_s": base_total,
                "speedup": base_total / total,
                "baseline": f"x{base:g} of the real tables; data x{growth:.2f} "
                f"({sizes[f]['nih_images']} NIH images, {sizes[f]['vbd_images']} DICOMs); peak "
                f"{peak:.0f} MB; per asset: {detail}",
            }
        )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    for r in main():
        print(r)
