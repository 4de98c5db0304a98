"""The champion gate's decision, on paired figures.

When a new model version is evaluated, the current champion is re-scored on the *current* test split
with its own detection rule (the shell does that), so both are measured on the same images. The
gate then looks at the paired difference new − champion of threshold-free test mAP50, with a paired
bootstrap 95% interval (`metrics.paired_bootstrap`).

Rule: promote (alias `champion`) when the point estimate of the difference is >= −margin; otherwise
the new version becomes `challenger`. The point estimate decides, not the interval's lower bound: on
the small test sets of a retraining loop the interval is wide, and a lower-bound rule would keep an
old champion forever. The interval is recorded beside the decision, with `non_inferior` saying
whether its lower bound also clears −margin. The first version is champion.
"""

from __future__ import annotations

import math

CHAMPION, CHALLENGER = "champion", "challenger"


def decide(diff: float | None, margin: float) -> str:
    """champion when there is no champion to compare with (diff None), or diff >= −margin."""
    if diff is None:
        return CHAMPION
    if math.isnan(diff):
        return CHALLENGER
    return CHAMPION if diff >= -margin else CHALLENGER


def gate_record(paired: dict | None, margin: float, new_version: str, champion_version: str | None) -> dict:
    """The decision and its figures, as tags for the new version and metadata for the asset.
    `paired`: `metrics.paired_bootstrap(new, champion)` on the current test images, or None when there
    is no other champion (`champion_version` None: the first version; equal to `new_version`: the
    champion itself evaluated again)."""
    if paired is None:
        reason = ("the champion itself, evaluated again" if champion_version == str(new_version)
                  else "first version: nothing to compare with")
        return {"decision": CHAMPION, "version": str(new_version), "compared_with": None, "margin": margin,
                "reason": reason}
    decision = decide(paired["diff"], margin)
    return {"decision": decision, "version": str(new_version), "compared_with": str(champion_version),
            "margin": margin, "new_map50": paired["a"], "champion_map50": paired["b"], "diff": paired["diff"],
            "diff_ci_low": paired["ci_low"], "diff_ci_high": paired["ci_high"], "test_images": paired["images"],
            "non_inferior": bool(paired["ci_low"] >= -margin) if paired["ci_low"] == paired["ci_low"] else False,
            "reason": f"paired difference {paired['diff']:+.4f} (95% CI {paired['ci_low']:+.4f} to "
                      f"{paired['ci_high']:+.4f}) on {paired['images']} test images "
                      f"{'>=' if decision == CHAMPION else '<'} -{margin:g}"}
