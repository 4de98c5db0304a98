"""Tiles and slices: a full-resolution radiograph cut into overlapping windows of the model's input
size, so that a small finding keeps its pixels (the study shrinks a 3,000 px image to 800 px).

`windows` lays the grid (the last row and column flush with the image's edge, never past it);
`boxes_in_window` gives a window's boxes for training, clipped to it and kept only where enough of
the box's area lies inside (`min_visible`, a setting); `to_image` moves a window's detections back to
the image's pixels for sliced inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COORDS = ["x_min", "y_min", "x_max", "y_max"]


@dataclass(frozen=True)
class Window:
    """A tile or slice: its top-left corner and size in the image's pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def corners(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.width, self.y + self.height


def _starts(length: int, size: int, overlap: float) -> list[int]:
    if length <= size:
        return [0]
    step = max(1, int(round(size * (1 - overlap))))
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def windows(width: int, height: int, size: int, overlap: float = 0.2) -> list[Window]:
    """Overlapping windows of `size` pixels (or the whole side where it is shorter) covering the
    image, `overlap` the share two neighbours have in common; row by row."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return [
        Window(x, y, min(size, width), min(size, height))
        for y in _starts(height, size, overlap)
        for x in _starts(width, size, overlap)
    ]


def boxes_in_window(boxes: pd.DataFrame, window: Window, min_visible: float = 0.5) -> pd.DataFrame:
    """The boxes a training tile keeps, in the tile's pixels: each clipped to the window, kept only
    where at least `min_visible` of its area lies inside (a sliver of a finding at the edge would
    teach the model to box a fragment)."""
    x0, y0, x1, y1 = window.corners
    xy = boxes[COORDS].to_numpy(float)
    clipped = np.column_stack(
        [
            np.clip(xy[:, 0], x0, x1),
            np.clip(xy[:, 1], y0, y1),
            np.clip(xy[:, 2], x0, x1),
            np.clip(xy[:, 3], y0, y1),
        ]
    )
    area = (xy[:, 2] - xy[:, 0]) * (xy[:, 3] - xy[:, 1])
    inside = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(
        clipped[:, 3] - clipped[:, 1], 0, None
    )
    keep = (area > 0) & (inside >= min_visible * area) & (inside > 0)
    out = boxes[keep].copy()
    out[COORDS] = clipped[keep] - np.array([x0, y0, x0, y0], float)
    return out.reset_index(drop=True)


def to_image(detections: pd.DataFrame, window: Window) -> pd.DataFrame:
    """A slice's detections (in the slice's pixels) moved to the whole image's pixels."""
    out = detections.copy()
    out[COORDS] = detections[COORDS].to_numpy(float) + np.array(
        [window.x, window.y, window.x, window.y], float
    )
    return out
