"""One detection rule per task, applied the same way by tuning, test evaluation and the web app.

A `DetectionRule` is everything that turns a model's raw outputs into boxes: the confidence and
IoU thresholds, class-agnostic NMS or not, one label per box (ultralytics' `predict` is single-label)
and the most boxes kept per image *after* NMS. Tuning chooses `conf` and `iou` on val; the rest is
fixed per task (`united_multi` is class-agnostic, as in the study's demo; every other task per class).

Every path runs the model through ultralytics' `predict` on one image at a time, decoded by
`to_gray`, so the letterbox and the pixels are the web app's own:

- `detect` is the web app's call, and evaluation's (at a low confidence floor for threshold-free AP);
- `capture_candidates` keeps each image's raw candidates above a floor from the same forward pass,
  and `replay` re-applies ultralytics' NMS to them at any (conf, iou): its boxes are exactly the boxes
  `detect` returns at that pair (tested), so a tuning grid costs one forward pass.

NMS keeps candidates whose best class score is strictly above `conf`, suppresses, then keeps the
`max_det` best. Because a box is only suppressed by a higher-scoring one, the boxes of the rule at
`conf` are exactly the boxes of the rule at a lower floor whose score is above `conf`: that is why
evaluation predicts once at the floor and reads the operating point off the same table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .compat import capturing_predictor

BOX_COLUMNS = ["image_id", "label", "score", "x_min", "y_min", "x_max", "y_max"]
#: the confidence floor for threshold-free AP (COCO and ultralytics' val use the same)
AP_FLOOR = 0.001


@dataclass(frozen=True)
class DetectionRule:
    conf: float
    iou: float
    agnostic: bool = False
    #: one label per box: ultralytics' `predict` (hence the web app) never gives a box two classes
    multi_label: bool = False
    max_det: int = 100
    #: why val could not choose (conf, iou) and the study's rule stands in ("" where tuning chose);
    #: a note on the rule, not part of what it does (two rules that detect alike are equal)
    fallback: str = field(default="", compare=False)

    def __post_init__(self):
        if not (0 <= self.conf <= 1 and 0 <= self.iou <= 1):
            raise ValueError(f"conf and iou must lie in [0, 1], got {self.conf}, {self.iou}")

    def at(self, conf: float | None = None, iou: float | None = None) -> "DetectionRule":
        return replace(
            self, conf=self.conf if conf is None else conf, iou=self.iou if iou is None else iou
        )

    def predict_kwargs(self) -> dict:
        """Arguments for ultralytics' `predict` (its NMS is single-label)."""
        if self.multi_label:
            raise ValueError(
                "ultralytics' predict is single-label: a served rule has multi_label=False"
            )
        return {
            "conf": self.conf,
            "iou": self.iou,
            "agnostic_nms": self.agnostic,
            "max_det": self.max_det,
        }

    @property
    def chosen(self) -> str:
        """How the rule was chosen, in words: "tuned on val" or "fallback: why"."""
        return f"fallback: {self.fallback}" if self.fallback else "tuned on val"

    def as_dict(self) -> dict:
        d = asdict(self)
        if not self.fallback:
            del d["fallback"]
        return d

    def tags(self) -> dict[str, str]:
        """The rule as registry tags (what the web app reads back)."""
        return {
            "nms_conf": f"{self.conf:g}",
            "nms_iou": f"{self.iou:g}",
            "nms_agnostic": str(self.agnostic).lower(),
            "nms_multi_label": str(self.multi_label).lower(),
            "nms_max_det": str(self.max_det),
            "nms_chosen": self.chosen[:250],
        }

    @classmethod
    def from_tags(cls, tags: dict) -> "DetectionRule":
        return cls(
            conf=float(tags["nms_conf"]),
            iou=float(tags["nms_iou"]),
            agnostic=str(tags.get("nms_agnostic", "false")).lower() == "true",
            multi_label=str(tags.get("nms_multi_label", "false")).lower() == "true",
            max_det=int(tags.get("nms_max_det", 100)),
            fallback=str(tags.get("nms_chosen", "")).removeprefix("fallback: ")
            if str(tags.get("nms_chosen", "")).startswith("fallback: ")
            else "",
        )

    @classmethod
    def from_dict(cls, d: dict) -> "DetectionRule":
        return cls(
            **{
                k: d[k]
                for k in ("conf", "iou", "agnostic", "multi_label", "max_det", "fallback")
                if k in d
            }
        )

    def describe(self) -> str:
        return (
            f"conf > {self.conf:g}, NMS IoU {self.iou:g} ({'class-agnostic' if self.agnostic else 'per class'}, "
            f"{'multi' if self.multi_label else 'one'} label per box), at most {self.max_det} boxes per image"
            + (f"; fallback: {self.fallback}" if self.fallback else "")
        )


# -- pixels ----------------------------------------------------------------------------------------
def to_gray(img: np.ndarray) -> np.ndarray:
    """Any decoded image (uint8/uint16, 1, 3 or 4 channels in OpenCV's BGR order) -> uint8 HxW.
    The one conversion every path uses (dataset files, uploads)."""
    import cv2

    if img.ndim == 3:
        code = {4: cv2.COLOR_BGRA2GRAY, 3: cv2.COLOR_BGR2GRAY}.get(img.shape[2])
        img = cv2.cvtColor(img, code) if code is not None else img[:, :, 0]
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = ((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).round().astype(np.uint8)
    return np.ascontiguousarray(img)


def read_gray(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG; RGBA and 16-bit included) as uint8 HxW, decoded as the web app does."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return to_gray(img)


def to_bgr(gray: np.ndarray) -> np.ndarray:
    """The 3-channel array the model is given (a grey image repeated), as the web app gives it."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)) if gray.ndim == 2 else gray


# -- running the model -----------------------------------------------------------------------------
def load_model(weights: str | Path):
    """An ultralytics YOLO model from weights (a .pt file or an OpenVINO/ONNX export)."""
    from .offline import prepare as configure_ultralytics

    configure_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(weights), task="detect")


def _boxes(res, image_id: str, classes) -> list[tuple]:
    b = res.boxes
    if b is None or len(b) == 0:
        return []
    xyxy, scores, cls = b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(int)
    return [
        (image_id, classes[c], float(s), *map(float, xy)) for xy, s, c in zip(xyxy, scores, cls)
    ]


def detect(
    model, gray: np.ndarray, rule: DetectionRule, imgsz: int, classes, image_id: str = ""
) -> pd.DataFrame:
    """Boxes of one image (pixels of `gray`), by the rule: what the web app returns."""
    res = model.predict(to_bgr(gray), imgsz=imgsz, verbose=False, **rule.predict_kwargs())[0]
    return pd.DataFrame(_boxes(res, image_id, list(classes)), columns=BOX_COLUMNS)


def detect_images(
    model, images: pd.DataFrame, rule: DetectionRule, imgsz: int, classes, progress=None
) -> pd.DataFrame:
    """`detect` over `images` (image_id, path), one image at a time as the web app sees them."""
    rows: list[tuple] = []
    classes = list(classes)
    for n, (image_id, path) in enumerate(zip(images["image_id"], images["path"]), start=1):
        res = model.predict(
            to_bgr(read_gray(path)), imgsz=imgsz, verbose=False, **rule.predict_kwargs()
        )[0]
        rows += _boxes(res, image_id, classes)
        if progress and (n % 50 == 0 or n == len(images)):
            progress(n, len(images))
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


@dataclass
class Candidates:
    """One image's raw outputs above a floor, as ultralytics' NMS takes them: (4 + nc, n) with
    centre-size boxes in the letterboxed input's pixels, and the two shapes to map boxes back."""

    image_id: str
    raw: object  # torch.Tensor (4 + nc, n)
    input_hw: tuple[int, int]
    orig_hw: tuple[int, int]


def capture_candidates(
    model, images: pd.DataFrame, imgsz: int, floor: float, progress=None
) -> list[Candidates]:
    """One forward pass over `images` (image_id, path), the web app's way; the raw candidates above
    `floor` of each image."""
    sink: list = []
    # one class: ultralytics keeps one predictor for the pass
    predictor = capturing_predictor(sink, floor)
    out = []
    try:
        for n, (image_id, path) in enumerate(zip(images["image_id"], images["path"]), start=1):
            model.predict(
                to_bgr(read_gray(path)),
                imgsz=imgsz,
                verbose=False,
                conf=floor,
                iou=0.7,
                predictor=predictor,
            )
            raw, input_hw, orig_hw = sink.pop()
            out.append(Candidates(image_id, raw, input_hw, orig_hw))
            if progress and (n % 50 == 0 or n == len(images)):
                progress(n, len(images))
    finally:
        model.predictor = None  # plain predictions afterwards get ultralytics' own predictor
    return out


def raw_boxes(
    raw, input_hw, orig_hw, rule: DetectionRule, classes, image_id: str = ""
) -> list[tuple]:
    """ultralytics' NMS at the rule over one image's raw outputs ((4 + nc, n), centre-size boxes in
    the letterboxed input's pixels), boxes mapped back to the original pixels: what its predictor's
    postprocessing returns. Rows as `BOX_COLUMNS`."""
    import torch
    from ultralytics.utils import nms, ops

    raw = torch.as_tensor(raw)
    if raw.shape[1] == 6:
        # ultralytics reads a last dimension of 6 as an end-to-end model's (boxes, 6) output: one
        # all-zero candidate more (dropped by the conf filter, which is strict) keeps the layout
        raw = torch.cat([raw, torch.zeros(raw.shape[0], 1, dtype=raw.dtype)], 1)
    out = nms.non_max_suppression(
        raw[None],
        rule.conf,
        rule.iou,
        agnostic=rule.agnostic,
        multi_label=rule.multi_label,
        max_det=rule.max_det,
        nc=len(classes),
    )[0]
    if not len(out):
        return []
    out = out.clone()
    out[:, :4] = ops.scale_boxes(tuple(input_hw), out[:, :4], tuple(orig_hw))
    return [
        (image_id, classes[int(k)], float(s), x0, y0, x1, y1)
        for x0, y0, x1, y1, s, k in out[:, :6].tolist()
    ]


def replay(candidates: list[Candidates], rule: DetectionRule, classes) -> pd.DataFrame:
    """ultralytics' NMS at the rule over kept candidates, boxes mapped back to the original pixels:
    the boxes `detect` returns for those images at that rule."""
    classes = list(classes)
    rows: list[tuple] = []
    for c in candidates:
        rows += raw_boxes(c.raw, c.input_hw, c.orig_hw, rule, classes, c.image_id)
    return pd.DataFrame(rows, columns=BOX_COLUMNS)
