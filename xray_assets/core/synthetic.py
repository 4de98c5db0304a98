"""Synthetic chest radiographs in both datasets' native layouts (the embedded sample dataset).

Every class has its own look on a plausible chest background, so that a detector trained for a
few CPU epochs finds them far above chance:

- Cardiomegaly: the heart shadow is enlarged (cardiothoracic ratio well above 0.5).
- Nodule: small round, fairly sharp opacities inside a lung. Mass: a larger lobulated opacity.
- Effusion: a dense lower-lateral meniscus filling a costophrenic angle.
- Pneumothorax: a black rim without lung markings along the apex/lateral wall, with a pleural line.
- Atelectasis: a plate-like dense band in a lower zone. Infiltrate: patchy, fuzzy opacity.
- Pneumonia: dense lobar consolidation with dark air bronchograms.

Geometry is drawn in normalised coordinates, so the same scene renders at any pixel size; the
boxes written to the CSVs are in the pixels of the file written. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import layout
from .atomic import atomic_path
from .classes import NIH_CLASSES, VINBIGDATA_CLASSES

# -- scene ---------------------------------------------------------------------------------------


@dataclass
class Lesion:
    label: str  # NIH class name, or a VinBigData class name for the unmapped findings
    box: tuple[float, float, float, float]  # normalised x_min, y_min, x_max, y_max


@dataclass
class Scene:
    rng: np.random.Generator
    lungs: list[tuple[float, float, float, float]] = field(default_factory=list)  # cx, cy, ax, ay
    heart: tuple[float, float, float, float] = (0.54, 0.64, 0.13, 0.10)
    lesions: list[Lesion] = field(default_factory=list)


def _blur_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _ellipse_mask(h: int, w: int, cx, cy, ax, ay, angle=0.0) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    cv2.ellipse(
        m,
        (int(cx * w), int(cy * h)),
        (max(1, int(ax * w)), max(1, int(ay * h))),
        angle,
        0,
        360,
        1.0,
        -1,
        lineType=cv2.LINE_AA,
    )
    return m


def _extent(mask: np.ndarray, h: int, w: int) -> tuple[float, float, float, float]:
    """The normalised box around a mask's non-zero pixels."""
    ys, xs = np.nonzero(mask)
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def _soft(m: np.ndarray, px: float) -> np.ndarray:
    return cv2.GaussianBlur(m, (0, 0), max(px, 0.5)) if px > 0 else m


class Renderer:
    """Draws a scene at `size` (h, w) pixels, as float32 in [0, 1] (1 = dense/white)."""

    def __init__(self, scene: Scene, h: int, w: int):
        self.s, self.h, self.w = scene, h, w
        self.rng = scene.rng
        self.px = min(h, w) / 1024.0  # pixels per "1024 px" unit, to scale blur radii

    def base(self, cardiomegaly: bool) -> tuple[np.ndarray, np.ndarray]:
        h, w, rng, s = self.h, self.w, self.rng, self.s
        img = np.full((h, w), 0.04, np.float32)
        body = _soft(_ellipse_mask(h, w, 0.5, 0.62, 0.47, 0.62), 18 * self.px)
        img += 0.50 * body
        lungs = np.zeros((h, w), np.float32)
        jx, jy = rng.uniform(-0.015, 0.015, 2)
        s.lungs = [
            (0.31 + jx, 0.46 + jy, rng.uniform(0.14, 0.16), rng.uniform(0.29, 0.33)),
            (0.69 + jx, 0.46 + jy, rng.uniform(0.13, 0.15), rng.uniform(0.28, 0.32)),
        ]
        for cx, cy, ax, ay in s.lungs:
            lungs = np.maximum(lungs, _ellipse_mask(h, w, cx, cy, ax, ay))
        lungs = _soft(lungs, 10 * self.px)
        img -= 0.30 * lungs
        # lung markings: fine vessel-like texture inside the lungs
        markings = _blur_noise(rng, (h, w), 3 * self.px)
        img += 0.035 * markings * lungs
        # ribs: bright arcs over the lungs
        ribs = np.zeros((h, w), np.float32)
        thick = max(1, int(9 * self.px))
        for side in (-1, 1):
            cx = 0.5 + side * 0.05
            for k in range(9):
                cy = 0.16 + 0.075 * k
                cv2.ellipse(
                    ribs,
                    (int(cx * w), int(cy * h)),
                    (int(0.34 * w), int(0.09 * h)),
                    0,
                    0 if side > 0 else 180,
                    90 if side > 0 else 270,
                    1.0,
                    thick,
                    lineType=cv2.LINE_AA,
                )
        img += 0.07 * _soft(ribs, 2 * self.px) * lungs
        # mediastinum and spine
        spine = np.zeros((h, w), np.float32)
        cv2.rectangle(spine, (int(0.455 * w), int(0.05 * h)), (int(0.545 * w), h), 1.0, -1)
        img += 0.25 * _soft(spine, 12 * self.px)
        # heart shadow
        if cardiomegaly:
            ax, ay = rng.uniform(0.20, 0.24), rng.uniform(0.13, 0.15)
        else:
            ax, ay = rng.uniform(0.11, 0.135), rng.uniform(0.085, 0.10)
        cx, cy = 0.53 + rng.uniform(-0.01, 0.02), 0.66 + rng.uniform(-0.01, 0.01)
        s.heart = (cx, cy, ax, ay)
        heart = _soft(_ellipse_mask(h, w, cx, cy, ax, ay), 6 * self.px)
        img = img * (1 - heart) + 0.68 * heart
        if cardiomegaly:
            s.lesions.append(
                Lesion("Cardiomegaly", (cx - ax, cy - ay, cx + ax, min(cy + ay, 0.99)))
            )
        return img, lungs

    def _in_lung(self, margin: float) -> tuple[float, float, tuple]:
        cx, cy, ax, ay = self.s.lungs[self.rng.integers(2)]
        for _ in range(50):
            x = self.rng.uniform(cx - ax + margin, cx + ax - margin)
            y = self.rng.uniform(cy - ay + margin, cy + ay - margin)
            if ((x - cx) / (ax - margin)) ** 2 + ((y - cy) / (ay - margin)) ** 2 < 1:
                return x, y, (cx, cy, ax, ay)
        return cx, cy, (cx, cy, ax, ay)

    def lesion(self, img: np.ndarray, label: str) -> np.ndarray:
        """`img` with one finding of `label` drawn (and its box recorded in the scene)."""
        if label == "Pneumothorax":
            return self._pneumothorax(img)
        drawn = {
            "Nodule": self._nodule,
            "Mass": self._mass,
            "Effusion": self._effusion,
            "Atelectasis": self._atelectasis,
            "Infiltrate": self._opacity,
            "Pneumonia": self._opacity,
        }.get(label)
        # VinBigData findings outside the six: drawn, never boxed by the study's classes
        if drawn is None:
            return self._unmapped(img, label)
        m, box, amp, blur = drawn(label)
        img = img + amp * _soft(m, blur * self.px)
        self.s.lesions.append(Lesion(label, box))
        return img

    def _nodule(self, label: str):
        h, w, rng = self.h, self.w, self.rng
        r = rng.uniform(0.028, 0.042)
        x, y, _ = self._in_lung(r + 0.02)
        m = _ellipse_mask(h, w, x, y, r, r * w / h)
        return m, (x - r, y - r * w / h, x + r, y + r * w / h), 0.45, 2.0

    def _mass(self, label: str):
        h, w, rng = self.h, self.w, self.rng
        r = rng.uniform(0.05, 0.075)
        x, y, _ = self._in_lung(r + 0.01)
        xs, ys = [x], [y]
        m = _ellipse_mask(h, w, x, y, r, r)
        for _ in range(2):
            dx, dy = rng.uniform(-0.5, 0.5, 2) * r
            rr = r * rng.uniform(0.55, 0.8)
            m = np.maximum(m, _ellipse_mask(h, w, x + dx, y + dy, rr, rr))
            xs += [x + dx - rr, x + dx + rr]
            ys += [y + dy - rr, y + dy + rr]
        box = (min(xs + [x - r]), min(ys + [y - r]), max(xs + [x + r]), max(ys + [y + r]))
        return m, box, 0.40, 3.0

    def _effusion(self, label: str):
        h, w, rng = self.h, self.w, self.rng
        cx, cy, ax, ay = self.s.lungs[rng.integers(2)]
        lateral = -1 if cx < 0.5 else 1
        top = cy + ay * rng.uniform(0.35, 0.55)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xn, yn = xx / w, yy / h
        # meniscus: higher laterally (concave up)
        t = np.clip((xn - cx) * lateral / ax, -1, 1)
        edge = top - 0.10 * ay * (t + 1) ** 2
        lung = _ellipse_mask(h, w, cx, cy, ax, ay)
        m = ((yn > edge) & (lung > 0.5)).astype(np.float32)
        x0, x1 = (cx - ax, cx + ax * 0.6) if lateral < 0 else (cx - ax * 0.6, cx + ax)
        m[:, : int(x0 * w)] = 0
        m[:, int(x1 * w) :] = 0
        return m, _extent(m, h, w), 0.42, 4.0

    def _pneumothorax(self, img: np.ndarray) -> np.ndarray:
        h, w, rng = self.h, self.w, self.rng
        cx, cy, ax, ay = self.s.lungs[rng.integers(2)]
        depth = rng.uniform(0.22, 0.32)
        outer = _ellipse_mask(h, w, cx, cy, ax, ay)
        inner = _ellipse_mask(
            h,
            w,
            cx + (0.5 - cx) * depth * 0.6,
            cy + ay * depth * 0.5,
            ax * (1 - depth * 0.7),
            ay * (1 - depth * 0.6),
        )
        rim = np.clip(outer - inner, 0, 1)
        rim[int((cy + 0.2 * ay) * h) :, :] = 0  # apical and lateral only
        box = _extent(rim > 0.5, h, w)
        rim = _soft(rim, 1.5 * self.px)
        img = img * (1 - rim) + 0.03 * rim  # black, no markings
        iterations = max(1, int(3 * self.px))
        edge = inner - cv2.erode(inner, np.ones((3, 3), np.uint8), iterations=iterations)
        line = _soft(np.clip(edge, 0, 1), 1)
        line[int((cy + 0.2 * ay) * h) :, :] = 0
        img = img + 0.25 * line
        self.s.lesions.append(Lesion("Pneumothorax", box))
        return img

    def _atelectasis(self, label: str):
        h, w, rng = self.h, self.w, self.rng
        x, y, _ = self._in_lung(0.06)
        y = max(y, self.s.lungs[0][1])
        length, thick, ang = (
            rng.uniform(0.07, 0.10),
            rng.uniform(0.012, 0.02),
            rng.uniform(-25, 25),
        )
        m = _ellipse_mask(h, w, x, y, length, thick, ang)
        return m, _extent(m > 0.5, h, w), 0.40, 2.0

    def _opacity(self, label: str):
        """Infiltrate (a patchy opacity) or Pneumonia (a dense one with air bronchograms)."""
        h, w, rng = self.h, self.w, self.rng
        big = label == "Pneumonia"
        r = rng.uniform(0.09, 0.12) if big else rng.uniform(0.06, 0.09)
        x, y, _ = self._in_lung(r * 0.6)
        region = _ellipse_mask(h, w, x, y, r, r * 1.2)
        tex = _blur_noise(rng, (h, w), (2.5 if big else 6) * self.px)
        if big:
            m = region * 0.95
            # air bronchograms: dark branching lines
            lines = np.zeros((h, w), np.float32)
            for _ in range(4):
                a = rng.uniform(0, np.pi)
                p0 = (int((x - 0.7 * r * np.cos(a)) * w), int((y - 0.7 * r * np.sin(a)) * h))
                p1 = (int((x + 0.7 * r * np.cos(a)) * w), int((y + 0.7 * r * np.sin(a)) * h))
                cv2.line(lines, p0, p1, 1.0, max(1, int(5 * self.px)), cv2.LINE_AA)
            m = np.clip(m - 0.6 * lines * region, 0, 1)
            amp, blur = 0.42, 4.0
        else:
            m = region * np.clip(0.55 + 0.45 * tex, 0, 1)
            amp, blur = 0.30, 8.0
        return m, _extent(region > 0.5, h, w), amp, blur

    def _unmapped(self, img: np.ndarray, label: str) -> np.ndarray:
        h, w, rng = self.h, self.w, self.rng
        if label == "Aortic enlargement":
            x, y, r = 0.44, 0.26, rng.uniform(0.04, 0.055)
            m = _ellipse_mask(h, w, x, y, r, r)
            box = (x - r, y - r, x + r, y + r)
        elif label == "Pleural thickening":
            cx, cy, ax, ay = self.s.lungs[rng.integers(2)]
            m = np.clip(
                _ellipse_mask(h, w, cx, cy - ay * 0.6, ax, ay * 0.35)
                - _ellipse_mask(h, w, cx, cy - ay * 0.55, ax * 0.9, ay * 0.32),
                0,
                1,
            )
            ys_, xs_ = np.nonzero(m > 0.5)
            box = (xs_.min() / w, ys_.min() / h, (xs_.max() + 1) / w, (ys_.max() + 1) / h)
        else:  # fibrosis / other lesion: reticular texture in a lung zone
            x, y, _ = self._in_lung(0.08)
            r = 0.07
            region = _ellipse_mask(h, w, x, y, r, r)
            m = region * (np.abs(_blur_noise(rng, (h, w), 2 * self.px)) < 0.35)
            box = (x - r, y - r, x + r, y + r)
        self.s.lesions.append(Lesion(label, box))
        return img + 0.22 * _soft(m.astype(np.float32), 2 * self.px)

    def finish(self, img: np.ndarray) -> np.ndarray:
        rng = self.rng
        gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05)
        gy = np.linspace(-1, 1, self.h, dtype=np.float32)[:, None]
        img = img * gain + bias + 0.03 * gy
        img += rng.normal(0, 0.018, img.shape).astype(np.float32)
        return np.clip(img, 0, 1)


def render(
    rng: np.random.Generator, labels: list[str], h: int, w: int
) -> tuple[np.ndarray, list[Lesion]]:
    scene = Scene(rng=rng)
    r = Renderer(scene, h, w)
    img, _ = r.base(cardiomegaly="Cardiomegaly" in labels)
    for label in labels:
        if label != "Cardiomegaly":
            img = r.lesion(img, label)
    return r.finish(img), scene.lesions


# -- NIH layout ------------------------------------------------------------------------------------

NIH_SIZE = 1024
NIH_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
#: findings that appear in Data_Entry but have no box class
NIH_UNBOXED_FINDINGS = (
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "Consolidation",
    "Edema",
)


def _nih_label_plan(rng: np.random.Generator, n: int) -> list[list[str]]:
    """Box labels per annotated image: every class equally often, a few images with two."""
    plan = []
    for i in range(n):
        first = NIH_CLASSES[i % len(NIH_CLASSES)]
        labels = [first]
        if rng.random() < 0.12:
            second = NIH_CLASSES[rng.integers(len(NIH_CLASSES))]
            if second != first:
                labels.append(second)
        plan.append(labels)
    order = rng.permutation(n)
    return [plan[i] for i in order]


def _pool_map(fn, jobs: list, workers: int | None):
    """Render in a process pool (each job carries its own seed, so the output is the same either way)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 8:
        return [fn(j) for j in jobs]
    # spawned workers (a forked child of a process that used OpenCV's threads can deadlock), one
    # OpenCV thread each: the pool already fills the cores
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=cv2.setNumThreads,
        initargs=(1,),
    ) as pool:
        return list(pool.map(fn, jobs, chunksize=4))


def nih_box_line(image_id: str, label: str, x0, y0, x1, y1) -> str:
    """One BBox_List row (NIH's layout: x, y, w, h) of a box given by its corners in pixels."""
    return ",".join([image_id, label, *(repr(float(v)) for v in (x0, y0, x1 - x0, y1 - y0))])


def _box_line(image_id: str, label: str, box) -> str:
    """The BBox_List row of a lesion's normalised box, in the 1024 px PNG's pixels."""
    x0, y0, x1, y1 = (v * NIH_SIZE for v in box)
    return nih_box_line(
        image_id, label, max(x0, 0.0), max(y0, 0.0), min(x1, NIH_SIZE), min(y1, NIH_SIZE)
    )


def _nih_image(job: tuple) -> tuple[str, list[str], list[str]]:
    """Render and write one NIH PNG. Returns (finding text, box lines, oracle lines): the oracle
    has the true box of every drawn box-class finding the box list leaves out."""
    seed, idx, path, image_id, kind, labels, unboxed = job
    rng = np.random.default_rng([seed, 11, idx])
    # `unboxed`: a finding drawn and listed in Data_Entry but left without a box, as in the real list.
    # Drawn at half size and scaled up to NIH's 1024 px (4x less drawing; boxes are normalised)
    img, lesions = render(rng, labels + unboxed, NIH_SIZE // 2, NIH_SIZE // 2)
    img = cv2.resize(img, (NIH_SIZE, NIH_SIZE), interpolation=cv2.INTER_LINEAR)
    findings = sorted(
        {"Infiltration" if les.label == "Infiltrate" else les.label for les in lesions}
    )
    if kind != "background" and rng.random() < 0.2:
        findings = sorted(set(findings) | {str(rng.choice(NIH_UNBOXED_FINDINGS))})
    boxes, oracle = [], []
    for les in lesions:
        if les.label not in NIH_CLASSES:
            continue
        line = _box_line(image_id, les.label, les.box)
        if kind == "annotated" and les.label not in unboxed:
            boxes.append(line)
        elif kind != "background":
            oracle.append(line)
    u8 = (img * 255).round().astype(np.uint8)
    if idx % 25 == 7:  # a few RGBA files (every 25th), like the real set
        u8 = cv2.cvtColor(u8, cv2.COLOR_GRAY2BGRA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _, buf = cv2.imencode(".png", u8, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        tmp.write_bytes(buf.tobytes())
    return ("|".join(findings) if findings else "No Finding"), boxes, oracle


#: NIH's rates, measured on the genuine public files (XRAY_REAL_DATA, PROVENANCE.md there): 494 of the 765
#: box images with a Data_Entry row list another box-class finding without a box (65%); tens of
#: thousands of images list a box-class finding and have no box at all (39,930 rows of the 59,824 of
#: the Data_Entry subset, against 880 box images): the sample data keeps "several" per box image
PARTIAL_RATE = 0.65
LABEL_ONLY_RATIO = 3.0
#: the true boxes of the findings the sample data leaves unboxed, in BBox_List's layout, beside (not
#: in) the native layout: the active-learning simulation's oracle; the pipeline never reads it
ORACLE = ("simulation", "oracle_nih_boxes.csv")


def write_nih(
    out: Path,
    n_annotated: int,
    seed: int,
    background_ratio: float = 2.0,
    n_unboxed: int | None = None,
    workers: int | None = None,
    first_patient: int = 1,
    unboxed_extra: float = PARTIAL_RATE,
    oracle: Path | None = None,
) -> dict[str, int]:
    """NIH's layout under `out`. `n_unboxed`: label-only images, listing (and showing) one or two
    box-class findings with no box at all (default `LABEL_ONLY_RATIO` per box image);
    `unboxed_extra`: the share of box images that list one more finding without a box (partially
    boxed). `oracle`: where to write the true boxes of every unboxed finding (BBox_List's layout)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    n_background = int(round(n_annotated * background_ratio))
    n_unboxed = int(round(n_annotated * LABEL_ONLY_RATIO)) if n_unboxed is None else n_unboxed
    kinds = ["annotated"] * n_annotated + ["background"] * n_background + ["unboxed"] * n_unboxed
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    label_plan = iter(_nih_label_plan(rng, n_annotated))
    meta, jobs, n_partial = [], [], 0
    idx, patient = 0, first_patient - 1
    while idx < len(kinds):
        patient += 1
        n_follow = int(rng.choice([1, 1, 2, 2, 3, 4]))
        age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        for follow in range(n_follow):
            if idx >= len(kinds):
                break
            kind = kinds[idx]
            image_id = f"{patient:08d}_{follow:03d}.png"
            folder = out / f"images_{1 + (idx // 500) % 12:03d}" / "images"
            labels, unboxed = _nih_findings(rng, kind, label_plan, unboxed_extra)
            n_partial += kind == "annotated" and bool(unboxed)
            ow, oh = int(rng.integers(2000, 3056)), int(rng.integers(2000, 3056))
            meta.append(
                (
                    image_id,
                    follow,
                    patient,
                    age + follow // 2,
                    sex,
                    str(rng.choice(["PA", "AP"])),
                    ow,
                    oh,
                )
            )
            jobs.append((seed, idx, str(folder / image_id), image_id, kind, labels, unboxed))
            idx += 1
    entries, boxes, truth = _nih_tables(out, meta, _pool_map(_nih_image, jobs, workers), oracle)
    ids = [m[0] for m in meta]
    test = {i for i in ids if int(i[:8]) % 5 == 0}
    _write_lines(out / "train_val_list.txt", [i for i in ids if i not in test], final_newline=False)
    _write_lines(out / "test_list.txt", [i for i in ids if i in test], final_newline=False)
    return {
        "nih_images": len(entries),
        "nih_boxes": len(boxes),
        "nih_patients": patient - first_patient + 1,
        "nih_label_only_images": n_unboxed,
        "nih_partially_boxed_images": n_partial,
        "oracle_boxes": len(truth),
    }


def _nih_findings(rng, kind: str, label_plan, unboxed_extra: float) -> tuple[list, list]:
    """(boxed findings, findings listed without a box) of one NIH image of `kind`."""
    unboxed: list[str] = []
    if kind == "annotated":
        labels = next(label_plan)
        if rng.random() < unboxed_extra:  # a second finding the box annotator left out
            unboxed = [str(rng.choice([c for c in NIH_CLASSES if c not in labels]))]
    elif kind == "unboxed":
        labels = [str(c) for c in rng.choice(NIH_CLASSES, 1 + (rng.random() < 0.12), False)]
    else:
        labels = []
    return labels, unboxed


def _nih_tables(out: Path, meta: list, results: list, oracle: Path | None):
    """Data_Entry and BBox_List (and the oracle's boxes) from the images' rows and renders."""
    entries, boxes, truth = [], [], []
    for (image_id, follow, pid, age, sex, view, ow, oh), (finding_text, box_lines, hidden) in zip(
        meta, results
    ):
        entries.append(
            f"{image_id},{finding_text},{follow},{pid},{age},{sex},{view},{ow},{oh},0.143,0.143,"
        )
        boxes += box_lines
        truth += hidden
    _write_lines(out / "Data_Entry_2017.csv", [NIH_DATA_ENTRY_HEADER, *entries])
    _write_lines(out / "BBox_List_2017.csv", [NIH_BBOX_HEADER, *boxes])
    if oracle is not None:
        Path(oracle).parent.mkdir(parents=True, exist_ok=True)
        _write_lines(Path(oracle), [NIH_BBOX_HEADER, *truth])
    return entries, boxes, truth


def _write_lines(path: Path, lines: list[str], final_newline: bool = True) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")


# -- VinBigData layout -----------------------------------------------------------------------------

VBD_MAPPED = {  # NIH look -> VinBigData class id
    "Atelectasis": 1,
    "Cardiomegaly": 3,
    "Effusion": 10,
    "Infiltrate": 6,
    "Nodule": 8,
    "Mass": 8,
    "Pneumothorax": 12,
}
VBD_UNMAPPED = {
    "Aortic enlargement": 0,
    "Pleural thickening": 11,
    "Pulmonary fibrosis": 13,
    "Other lesion": 9,
}
RADIOLOGISTS = [f"R{i}" for i in range(1, 18)]


def _encode_variant(i: int) -> dict:
    """Cycle through the DICOM variants real VinBigData files come in."""
    return {
        "photometric": ("MONOCHROME2", "MONOCHROME1")[i % 2],
        "bits_stored": (12, 14, 16, 12, 15)[i % 5],
        "rescale": ((1.0, 0.0), (1.0, -1024.0), (0.5, 0.0))[i % 3],
        "voi": i % 4 != 3,
        "syntax": ("explicit", "j2k_lossless", "explicit", "j2k_lossy")[(i // 2) % 4],
    }


def write_dicom(path: Path, img: np.ndarray, variant: dict, serial: int) -> None:
    """Write `img` (float [0,1], 1 = white) as a DICOM of the given variant, atomically."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        JPEG2000,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        generate_uid,
    )

    bits = variant["bits_stored"]
    top = 2**bits - 1
    disp = img if variant["photometric"] == "MONOCHROME2" else 1.0 - img
    stored = np.round((0.04 + 0.92 * disp) * top).astype(np.uint16)
    slope, intercept = variant["rescale"]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"xray-assets-{serial}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    # Identifying tags, as real files carry them: the pipeline must never copy these anywhere.
    ds.PatientName = f"SYNTHETIC^PATIENT^{serial:05d}"
    ds.PatientID = f"SYN{serial:07d}"
    ds.PatientBirthDate = "19600101"
    ds.StudyDate = "20200102"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant["photometric"]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if (slope, intercept) != (1.0, 0.0) or serial % 2:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if variant["voi"]:
        lo = (0.04 * top) * slope + intercept
        hi = (0.96 * top) * slope + intercept
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{(hi - lo) * 1.02:.1f}"
    ds.PixelData = stored.tobytes()
    if variant["syntax"] == "j2k_lossless":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif variant["syntax"] == "j2k_lossy":
        ds.compress(JPEG2000, encoding_plugin="pylibjpeg", j2k_cr=[10])
    elif variant["syntax"] == "deflated":  # the whole dataset zlib-deflated (pydicom writes it so)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _vbd_image(job: tuple) -> list[list]:
    """Render one VinBigData image, simulate three readers, write its DICOM. Returns CSV rows."""
    seed, i, path, image_id, h, w, labels = job
    rng = np.random.default_rng([seed, 22, i])
    img, lesions = render(rng, labels, h, w)
    readers = list(rng.choice(RADIOLOGISTS, size=3, replace=False))
    drawn_by_someone = {j: False for j in range(len(lesions))}
    per_reader: dict[str, list[tuple[int, str, tuple]]] = {r: [] for r in readers}
    for k, reader in enumerate(readers):
        for j, les in enumerate(lesions):
            last_chance = k == len(readers) - 1 and not drawn_by_someone[j]
            if rng.random() < 0.15 and not last_chance:
                continue  # a missed finding
            drawn_by_someone[j] = True
            cid = VBD_MAPPED.get(les.label, VBD_UNMAPPED.get(les.label))
            copies = 2 if rng.random() < 0.08 else 1  # some readers split one finding in two
            for _ in range(copies):
                per_reader[reader].append(
                    (cid, VINBIGDATA_CLASSES[cid], _jitter(rng, les.box, w, h))
                )
        if lesions and rng.random() < 0.08:  # an extra box on a normal area
            x, y = rng.uniform(0.25, 0.7, 2)
            per_reader[reader].append(
                (8, VINBIGDATA_CLASSES[8], _jitter(rng, (x, y, x + 0.05, y + 0.05), w, h))
            )
    rows = []
    for reader in readers:
        if not per_reader[reader]:
            rows.append([image_id, "No finding", 14, reader, "", "", "", ""])
        for cid, name, (x0, y0, x1, y1) in per_reader[reader]:
            rows.append(
                [image_id, name, cid, reader, f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}", f"{y1:.1f}"]
            )
    write_dicom(Path(path), img, _encode_variant(i), serial=i)
    return rows


def write_vinbigdata(
    out: Path,
    n_annotated: int,
    seed: int,
    n_no_finding: int | None = None,
    n_unmapped_only: int | None = None,
    max_side: int = 1400,
    workers: int | None = None,
) -> dict[str, int]:
    (out / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    n_no_finding = max(2, n_annotated // 3) if n_no_finding is None else n_no_finding
    n_unmapped_only = max(1, n_annotated // 20) if n_unmapped_only is None else n_unmapped_only
    kinds = ["annotated"] * n_annotated + ["none"] * n_no_finding + ["unmapped"] * n_unmapped_only
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    looks = list(VBD_MAPPED)
    jobs = []
    for i, kind in enumerate(kinds):
        image_id = hashlib.md5(f"vbd-{seed}-{i}".encode()).hexdigest()
        h = int(rng.integers(int(max_side * 0.8), max_side))
        w = int(rng.integers(int(max_side * 0.7), h + 1))
        if kind == "annotated":
            labels = [looks[i % len(looks)]]
            if rng.random() < 0.25:
                labels.append(looks[rng.integers(len(looks))])
            if rng.random() < 0.15:
                labels.append(str(rng.choice(list(VBD_UNMAPPED))))
            labels = list(dict.fromkeys(labels))
        elif kind == "unmapped":
            labels = [str(rng.choice(list(VBD_UNMAPPED)))]
        else:
            labels = []
        jobs.append((seed, i, str(out / "train" / f"{image_id}.dicom"), image_id, h, w, labels))
    rows = [r for image_rows in _pool_map(_vbd_image, jobs, workers) for r in image_rows]
    n_boxes = sum(1 for r in rows if r[2] != 14)
    order = rng.permutation(len(rows))  # the real file is not grouped by image
    with atomic_path(out / "train.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            wr = csv.writer(fh, lineterminator="\n")
            wr.writerow(
                ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
            )
            for i in order:
                wr.writerow(rows[i])
    return {
        "vinbigdata_images": len(kinds),
        "vinbigdata_rows": len(rows),
        "vinbigdata_boxes": n_boxes,
    }


def _jitter(rng, box, w, h) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    d = rng.normal(0, 0.06, 4) * np.array([bw, bh, bw, bh])
    x0, y0, x1, y1 = x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]
    x0, x1 = sorted((float(np.clip(x0, 0, 1)) * w, float(np.clip(x1, 0, 1)) * w))
    y0, y1 = sorted((float(np.clip(y0, 0, 1)) * h, float(np.clip(y1, 0, 1)) * h))
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


#: written at the root of generated sample data: models trained on it say so (web app, reports)
SAMPLE_MARKER = "SAMPLE_DATA.json"


def is_sample_data(data_dir: str | Path) -> bool:
    return (Path(data_dir) / SAMPLE_MARKER).exists()


def write_sample_data(
    out_dir: str | Path,
    size: int = 120,
    seed: int = 0,
    background_ratio: float = 2.0,
    vinbigdata_max_side: int = 1100,
    workers: int | None = None,
    progress=None,
) -> dict[str, int]:
    """Both datasets under `out_dir` (`nih/`, `vinbigdata/`). `size`: annotated images per dataset.
    `progress(message)`: called as each part is written."""
    import json

    out = Path(out_dir)
    say = progress or (lambda m: None)
    say(f"NIH: {size} annotated images, their backgrounds and follow-ups, 1024 px PNGs ...")
    stats = write_nih(
        out / "nih", size, seed, background_ratio, workers=workers, oracle=out.joinpath(*ORACLE)
    )
    say(f"NIH: {stats['nih_images']} images, {stats['nih_boxes']} boxes written")
    say(f"VinBigData: {size} annotated DICOMs read by three radiologists each ...")
    stats |= write_vinbigdata(
        out / "vinbigdata", size, seed, max_side=vinbigdata_max_side, workers=workers
    )
    say(
        f"VinBigData: {stats['vinbigdata_images']} DICOMs, {stats['vinbigdata_rows']} reader rows written"
    )
    with atomic_path(out / SAMPLE_MARKER) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "generator": "xray-assets sample-data",
                    "synthetic": True,
                    "seed": seed,
                    "size": size,
                    **stats,
                },
                indent=2,
            )
        )
    return stats


def toy_yolo_dataset(
    root: str | Path,
    task: str,
    n: int,
    size: int,
    label_sets: list[list[str]],
    fractions: tuple[float, float] = (0.6, 0.8),
) -> Path:
    """A small YOLO dataset of rendered images for tests and benchmarks; returns its data.yaml.

    Image i draws `label_sets[i % len(label_sets)]` (NIH names) with seed i; images before
    `fractions[0] * n` are train, before `fractions[1] * n` val, the rest test.
    """
    import pandas as pd

    from .classes import TASKS
    from .yolo_dataset import build_dataset

    root = Path(root)
    rows, boxes = [], []
    for i in range(n):
        img, lesions = render(np.random.default_rng(i), label_sets[i % len(label_sets)], size, size)
        p = root / "img" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), (img * 255).astype(np.uint8))
        split = "train" if i < fractions[0] * n else ("val" if i < fractions[1] * n else "test")
        rows.append(
            {"image_id": p.name, "path": str(p), "width": size, "height": size, "split": split}
        )
        boxes += [
            {
                "image_id": p.name,
                "label": les.label,
                "x_min": les.box[0] * size,
                "y_min": les.box[1] * size,
                "x_max": les.box[2] * size,
                "y_max": les.box[3] * size,
            }
            for les in lesions
        ]
    build_dataset(
        root / "ds",
        TASKS[task],
        pd.DataFrame(rows),
        pd.DataFrame(boxes, columns=["image_id", "label", "x_min", "y_min", "x_max", "y_max"]),
    )
    return root / "ds" / layout.DATA_YAML


def write_drop(
    folder: str | Path,
    fmt: str,
    n_annotated: int = 6,
    seed: int = 101,
    first_patient: int | None = None,
    max_side: int = 700,
    ready: bool = True,
) -> Path:
    """A sample annotation drop for the inbox: new patients (NIH) or new image ids (VinBigData),
    in the native formats, with a READY marker unless `ready` is False. NIH drops of different
    seeds use different patients (a block of 1,000 per seed), so they never collide."""
    folder = Path(folder)
    if first_patient is None:
        first_patient = 90_000 + 1_000 * (seed % 9_000)
    if fmt == "nih":
        write_nih(
            folder,
            n_annotated,
            seed,
            background_ratio=0.0,
            n_unboxed=0,
            first_patient=first_patient,
            unboxed_extra=0.0,
        )
        for extra in ("train_val_list.txt", "test_list.txt"):
            (folder / extra).unlink(missing_ok=True)
    elif fmt == "vinbigdata":
        write_vinbigdata(
            folder, n_annotated, seed, n_no_finding=1, n_unmapped_only=0, max_side=max_side
        )
    else:
        raise ValueError(f"unknown drop format {fmt!r}: nih or vinbigdata")
    if ready:
        (folder / "READY").write_text("")
    return folder
