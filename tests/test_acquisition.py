"""The annotation queue's science on hand-made frames: which images are candidates, the acquisition
score, the ranking (partially boxed first, test patients only at random) and a batch's rules."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from xray_assets.core import acquisition
from xray_assets.core.classes import TASKS

LABELS = pd.DataFrame(
    {
        "image_id": ["a.png", "b.png", "c.png", "d.png", "e.png"],
        "patient_id": [1, 2, 3, 3, 4],
        "findings": [
            ["Mass", "Effusion"],
            ["Effusion"],
            ["Nodule"],
            ["Infiltrate"],
            ["No Finding"],
        ],
    }
)
BOXES = pd.DataFrame({"image_id": ["a.png"], "label": ["Mass"]})


def test_candidates_are_listed_findings_without_a_box_partially_boxed_marked():
    """Catches: an image whose listed findings are all boxed proposed again, a 'No Finding' image
    proposed as label-only, or a partially boxed image not recognised as such."""
    c = acquisition.candidates(LABELS, BOXES, TASKS["nih_multi"])
    assert dict(zip(c["image_id"], c["kind"])) == {
        "a.png": "partial",
        "b.png": "label_only",
        "c.png": "label_only",
        "d.png": "label_only",
    }
    assert dict(zip(c["image_id"], c["findings"]))["a.png"] == ["Effusion"]
    assert dict(zip(c["image_id"], c["findings"]))["d.png"] == ["Infiltrate"]
    united = acquisition.candidates(LABELS, BOXES, TASKS["united_mass_nodule"], exclude={"c.png"})
    assert list(united["image_id"]) == [], "a.png's Mass box boxes Mass/Nodule; c.png is pending"


def test_a_missed_listed_finding_scores_above_one_found_confidently():
    """Catches: the score rewarding what the model already finds, or ignoring the known label."""
    found = pd.DataFrame({"label": ["Effusion"], "score": [0.95]})
    missed = pd.DataFrame({"label": ["Mass"], "score": [0.95]})
    s_found, m_found, _ = acquisition.score(["Effusion"], found)
    s_missed, m_missed, _ = acquisition.score(["Effusion"], missed)
    assert m_found == pytest.approx(0.05) and m_missed == pytest.approx(1.0)
    assert s_missed > s_found
    unsure = pd.DataFrame({"label": ["Effusion"], "score": [0.5]})
    assert acquisition.score(["Effusion"], unsure)[2] == pytest.approx(1.0), "entropy of 0.5"
    assert acquisition.score(["Effusion"], found.iloc[0:0]) == (1.0, 1.0, 0.0)


def test_ranking_by_score_partially_boxed_first_only_by_rule_and_never_ranks_test_patients():
    """Catches: test candidates ordered by the model (a biased test split), a partially boxed
    image behind label-only ones where the rule leaves them out of training, or put first where it
    keeps them."""
    cands = acquisition.candidates(LABELS, BOXES, TASKS["nih_multi"])
    scores = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "d.png"],
            "score": [0.2, 0.9, 0.5, 0.7],
            "missed": [0.2, 0.9, 0.5, 0.7],
            "uncertainty": [0.0] * 4,
        }
    )
    splits = pd.Series({1: "train", 2: "val", 3: "test", 4: "train"})
    assert set(cands.loc[cands["kind"] == "partial", "image_id"]) == {"a.png"}
    q = acquisition.rank(cands, scores, splits, seed=0, partial_first=True)
    assert list(q["image_id"][:2]) == ["a.png", "b.png"], "partial first, then by score"
    by_score = acquisition.rank(cands, scores, splits, seed=0)
    assert list(by_score["image_id"][:2]) == ["b.png", "a.png"], "by score alone"
    test = q[q["split"] == "test"]
    assert set(test["image_id"]) == {"c.png", "d.png"} and test["score"].isna().all()
    assert (test["selection"] == "random (test)").all() and not math.isnan(q["score"].iloc[0])


def test_a_batch_takes_one_image_per_patient_quotas_and_the_test_share():
    """Catches: two images of one patient in a batch, a quota exceeded, or no test draw."""
    q = pd.DataFrame(
        {
            "image_id": [f"{i}.png" for i in range(8)],
            "patient_id": [1, 1, 2, 3, 4, 5, 6, 7],
            "split": ["train"] * 6 + ["test"] * 2,
            "findings": [
                ["Mass"],
                ["Mass"],
                ["Mass"],
                ["Mass"],
                ["Effusion"],
                ["Effusion"],
                ["Mass"],
                ["Effusion"],
            ],
            "kind": ["label_only"] * 8,
            "selection": ["acquisition"] * 6 + ["random (test)"] * 2,
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, math.nan, math.nan],
            "missed": [0.0] * 8,
            "uncertainty": [0.0] * 8,
            "rank": range(1, 9),
        }
    )
    b = acquisition.batch(q, size=5, quota={"Mass": 2}, test_share=0.2)
    assert list(b["image_id"]) == ["0.png", "2.png", "4.png", "5.png", "7.png"]
    assert b["patient_id"].is_unique
