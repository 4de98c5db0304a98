"""NMS threshold tuning from one forward pass.

The study tuned (conf, iou) by running ultralytics' validator once per grid point: 35 full passes
over val. Here the model runs once, through ultralytics' own `DetectionValidator` (same dataloader,
letterbox, rect batches and label handling as `model.val`), keeping for every image the raw
candidates above the grid's lowest confidence and its prepared labels. Every grid point is then
scored by re-applying ultralytics' NMS at (conf, iou) to those candidates and feeding the validator's
own matching and metrics, so each row equals `model.val(conf=..., iou=...)` on the same data
(a test checks this). Objective (the study's): mean(recall, mAP50).

`apply_nms` is the table-level NMS applied to raw predictions for test evaluation (the web app
applies the same pair through ultralytics' `predict`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

GRID_METRICS = {"metrics/precision(B)": "precision", "metrics/recall(B)": "recall",
                "metrics/mAP50(B)": "map50", "metrics/mAP50-95(B)": "map50_95"}


def apply_nms(raw: pd.DataFrame, conf: float, iou: float, agnostic: bool = False,
              max_det: int = 300) -> pd.DataFrame:
    """Detections with score >= conf, then NMS per image (per class unless `agnostic`)."""
    import torch
    from torchvision.ops import batched_nms

    kept = raw[raw["score"] >= conf]
    if kept.empty:
        return kept.copy()
    parts = []
    for _, det in kept.groupby("image_id", sort=False):
        boxes = torch.as_tensor(det[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32))
        scores = torch.as_tensor(det["score"].to_numpy(np.float32))
        groups = torch.zeros(len(det), dtype=torch.int64) if agnostic else torch.as_tensor(
            pd.factorize(det["label"])[0], dtype=torch.int64)
        keep = batched_nms(boxes, scores, groups, iou)[:max_det].numpy()
        parts.append(det.iloc[keep])
    return pd.concat(parts, ignore_index=True)


def _one_pass_validator(sink: list):
    """A DetectionValidator subclass that also records what grid scoring needs into `sink`."""
    from ultralytics.models.yolo.detect import DetectionValidator

    class OnePassValidator(DetectionValidator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.candidates: list = []   # per image: (4 + nc, k) raw outputs above the lowest conf
            self.targets: list = []      # per image: the validator's prepared labels
            sink.append(self)

        def postprocess(self, preds):
            p = preds[0] if isinstance(preds, (list, tuple)) else preds
            above = p[:, 4:4 + self.nc].amax(1) > self.args.conf   # the same test NMS starts with
            self.candidates.extend(p[b][:, above[b]].detach().float().cpu() for b in range(p.shape[0]))
            return super().postprocess(preds)

        def update_metrics(self, preds, batch):
            for si in range(len(preds)):
                pb = self._prepare_batch(si, batch)
                self.targets.append({k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in pb.items()})
            super().update_metrics(preds, batch)

        def score(self, conf: float, iou: float, agnostic: bool = False) -> dict[str, float]:
            """Re-run NMS at (conf, iou) on the kept candidates and return the validator's metrics."""
            import torch
            from ultralytics.utils import nms

            self.args.conf, self.args.iou = conf, iou
            self.metrics.clear_stats()
            self.metrics.clear_image_metrics()
            self.device = torch.device("cpu")
            self.iouv = self.iouv.cpu()
            for cand, pbatch in zip(self.candidates, self.targets):
                out = nms.non_max_suppression(cand[None], conf, iou, nc=0, multi_label=True,
                                              agnostic=agnostic or self.args.single_cls,
                                              max_det=self.args.max_det)[0]
                predn = self._prepare_pred({"bboxes": out[:, :4], "conf": out[:, 4], "cls": out[:, 5]})
                cls = pbatch["cls"].numpy()
                empty = predn["cls"].shape[0] == 0
                self.metrics.update_stats({
                    **self._process_batch(predn, pbatch), "target_cls": cls, "target_img": np.unique(cls),
                    "conf": np.zeros(0) if empty else predn["conf"].numpy(),
                    "pred_cls": np.zeros(0) if empty else predn["cls"].numpy(),
                    "im_name": Path(pbatch["im_file"]).name})
            self.metrics.process(save_dir=self.save_dir, plot=False)
            return dict(self.metrics.results_dict)

    return OnePassValidator


def val_args(imgsz: int, batch: int = 16, device: str | None = None, split: str = "val") -> dict:
    """The arguments both the one-pass tuner and a plain `model.val` get (parity rests on them)."""
    return {"imgsz": imgsz, "batch": batch, "device": device, "split": split, "plots": False,
            "save_json": False, "verbose": False, "max_det": 300}


def tune_grid(weights: str | Path, data_yaml: str | Path, conf_grid, iou_grid, imgsz: int, batch: int = 16,
              device: str | None = None, split: str = "val", agnostic: bool = False,
              log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """Score every (conf, iou) of the grid from one pass of the model over `split`."""
    from ..config import configure_ultralytics

    configure_ultralytics()
    from ultralytics import YOLO

    sink: list = []
    t0 = time.time()
    YOLO(str(weights)).val(validator=_one_pass_validator(sink), data=str(data_yaml), conf=min(conf_grid),
                           iou=max(iou_grid), agnostic_nms=agnostic,
                           **val_args(imgsz, batch, device, split))
    v = sink[0]
    t_pass = time.time() - t0
    n_cand = sum(int(c.shape[1]) for c in v.candidates)
    log(f"one pass over {len(v.targets)} {split} images in {t_pass:.1f}s kept {n_cand} candidates "
        f"above conf {min(conf_grid):g}; scoring {len(conf_grid) * len(iou_grid)} grid points")
    t0 = time.time()
    rows = []
    for c in conf_grid:
        for i in iou_grid:
            r = v.score(float(c), float(i), agnostic)
            row = {"conf": float(c), "iou": float(i), **{n: float(r[k]) for k, n in GRID_METRICS.items()}}
            row["objective"] = (row["recall"] + row["map50"]) / 2
            rows.append(row)
    return pd.DataFrame(rows), {"images": len(v.targets), "candidates": n_cand,
                                "pass_seconds": t_pass, "score_seconds": time.time() - t0}


def best_pair(grid: pd.DataFrame) -> dict[str, float]:
    """Highest objective; ties go to the higher conf, then the lower iou (fewer boxes)."""
    g = grid.sort_values(["objective", "conf", "iou"], ascending=[False, False, True], kind="mergesort")
    return {k: float(v) for k, v in g.iloc[0].items()}
