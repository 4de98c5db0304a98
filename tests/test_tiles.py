"""Tiles and slices on hand-made boxes: a tile keeps exactly the boxes it should (clipped to it, by
the visible-area rule), the grid covers the image without running past it, and a slice's detections
go back to the image's pixels."""

import pandas as pd
import pytest

from xray_assets.core import tiles

COLS = ["image_id", "label", "x_min", "y_min", "x_max", "y_max"]


def test_windows_cover_the_image_flush_with_its_edges():
    """Catches: a window past the image's edge, a strip of the image no window covers, or an
    overlap other than asked."""
    grid = tiles.windows(2000, 1500, 800, overlap=0.25)
    xs = sorted({w.x for w in grid})
    ys = sorted({w.y for w in grid})
    assert xs == [0, 600, 1200] and ys == [0, 600, 700]
    assert all(w.x + w.width <= 2000 and w.y + w.height <= 1500 for w in grid)
    covered = {
        (px, py)
        for w in grid
        for px in range(w.x, w.x + w.width, 100)
        for py in range(w.y, w.y + w.height, 100)
    }
    assert {(px, py) for px in range(0, 2000, 100) for py in range(0, 1500, 100)} <= covered
    assert tiles.windows(600, 500, 800) == [tiles.Window(0, 0, 600, 500)], "small image: one window"
    with pytest.raises(ValueError):
        tiles.windows(100, 100, 50, overlap=1.0)


def test_a_tile_keeps_exactly_the_boxes_it_should():
    """Catches: a box kept with too little of it inside (or dropped with enough), a box not clipped
    to the tile, coordinates left in the image's pixels."""
    boxes = pd.DataFrame(
        [
            ("a", "Nodule", 100, 100, 140, 140),  # wholly inside
            ("a", "Mass", 780, 100, 820, 140),  # half inside (x 780-800 of 780-820)
            ("a", "Mass", 790, 200, 830, 240),  # a quarter inside
            ("a", "Effusion", 900, 900, 950, 950),  # outside
            ("a", "Nodule", 700, 790, 760, 860),  # 10 of 70 rows inside
        ],
        columns=COLS,
    )
    window = tiles.Window(0, 0, 800, 800)
    kept = tiles.boxes_in_window(boxes, window, min_visible=0.5)
    assert kept[COLS[1:]].values.tolist() == [
        ["Nodule", 100, 100, 140, 140],
        ["Mass", 780, 100, 800, 140],
    ]
    assert len(tiles.boxes_in_window(boxes, window, min_visible=0.1)) == 4, (
        "a quarter, a seventh kept"
    )
    shifted = tiles.boxes_in_window(boxes, tiles.Window(600, 0, 800, 800), min_visible=0.5)
    assert shifted[COLS[2:]].values.tolist()[0] == [180, 100, 220, 140], "in the tile's pixels"


def test_a_slices_detections_go_back_to_the_image():
    """Catches: a slice's boxes left in the slice's pixels (every box off by its corner)."""
    dets = pd.DataFrame([("a", "Nodule", 10.0, 20.0, 30.0, 40.0)], columns=COLS).assign(score=0.9)
    back = tiles.to_image(dets, tiles.Window(600, 700, 800, 800))
    assert (
        back[COLS[2:]].values.tolist() == [[610.0, 720.0, 630.0, 740.0]] and back["score"][0] == 0.9
    )
