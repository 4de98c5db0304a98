"""The champion gate's decision, on paired figures, and how often chance alone would decide so.

When a new model version is evaluated, the current champion is re-scored on the *current* test split
with its own detection rule (the shell does that), so both are measured on the same images. The gate
looks at the paired difference d = new − champion of threshold-free test mAP50 and its patient-level
paired bootstrap (`metrics.paired_bootstrap`).

The null: what d would look like on this test split if the two models were equally good, taken from
the paired bootstrap re-centred on zero (its resampled differences minus d). On a split of tens of
boxes it is wide: deciding on the point estimate against a margin of 0.01 would keep out an equally
good model about half the time (a coin flip).

Rule (margin m, stated rate r, minimum count n; all recorded with the decision):
1. the first version is champion; the champion evaluated again stays champion;
2. fewer than n test boxes per class (on average) under the comparison: cannot tell, the champion
   stays;
3. a split that resolves the margin (the null puts at most r below -m): the point estimate decides,
   champion when d >= -m (the newer model wins what the margin calls a tie); an equally good model is
   kept out by chance at most r of the time;
4. a split that does not: the new version replaces the champion only when d reaches the null's
   (1 - r) quantile, so an equally good model replaces it by chance at most r of the time; otherwise
   the champion stays.

`null_rate` is the chance side of the rule on this split (step 3: P(null < -m); step 4: P(null >=
threshold)); `null_probability_of_decision` is how likely the decision taken would be between two
equally good models.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import enough_boxes, too_few

CHAMPION, CHALLENGER = "champion", "challenger"
#: the decision where nothing moved: no champion to keep, or a champion that could not be re-scored
HELD = "held"
#: the stated rate: an equally good model is kept out by chance at most this often (Profile.gate_null_rate)
NULL_RATE = 0.2


def rule_text(margin: float, rate: float, min_boxes: int) -> str:
    return (
        f"with at least {min_boxes} test boxes per class: champion when the paired difference new - champion of test "
        f"mAP50 is >= -{margin:g} where the split resolves that margin (an equally good model falls below it at "
        f"most {rate:.0%} of the time under the null, the paired patient-level bootstrap re-centred on 0); "
        f"elsewhere only when the difference reaches the null's {1 - rate:.0%} quantile; otherwise the champion "
        "stays"
    )


def threshold(diffs, diff: float, margin: float, rate: float) -> tuple[float, bool, float]:
    """(the difference the new version must reach, whether this split resolves the margin, the null
    rate of that threshold). The null: the resampled differences minus the observed one."""
    null = np.asarray(diffs, float) - diff
    below = float((null < -margin).mean())
    if below <= rate:
        return -margin, True, below
    # the smallest threshold that chance alone reaches at most `rate` of the time (ties included)
    values = np.unique(null)
    share_at_or_above = 1 - np.searchsorted(np.sort(null), values, side="left") / len(null)
    ok = np.flatnonzero(share_at_or_above <= rate)
    t = float(values[ok[0]]) if len(ok) else float(np.nextafter(values[-1], np.inf))
    return t, False, float((null >= t).mean())


def split_power(mean_ap_samples, margin: float, rate: float = NULL_RATE, seed: int = 0) -> dict:
    """What the gate can resolve on a test split before any second model exists, from one model's
    resampled test mAP50 (`metrics.bootstrap_intervals`): the null for an equally good, independent
    second model is the difference of two independent resamples (pairing a model with a correlated
    one narrows it, so these figures are the conservative side). Returns the share of that null
    below -margin (how often the point estimate would keep out an equally good model) and the
    smallest margin the split resolves at `rate`."""
    v = np.asarray(mean_ap_samples, float)
    if len(v) < 2:
        return {"null_rate_at_margin": float("nan"), "resolvable_margin": float("nan")}
    null = v - v[np.random.default_rng(seed).permutation(len(v))]
    return {
        "null_rate_at_margin": float((null < -margin).mean()),
        "resolvable_margin": float(-np.quantile(null, rate)),
    }


def decide(
    paired: dict | None, margin: float, rate: float = NULL_RATE, min_boxes: int = 10
) -> tuple[str, str]:
    """(decision, why) by the rule in the module docstring; `paired` None: nothing to compare with."""
    if paired is None:
        return CHAMPION, "nothing to compare with"
    diff, boxes, classes = (
        paired["diff"],
        int(paired.get("boxes", 0)),
        int(paired.get("classes", 1)),
    )
    if not enough_boxes(boxes, classes, min_boxes):
        return CHALLENGER, f"cannot tell: {too_few(boxes, classes, min_boxes)}; the champion stays"
    if math.isnan(diff) or len(paired["diffs"]) == 0:
        return CHALLENGER, "cannot tell: no paired difference; the champion stays"
    t, resolves, _ = threshold(paired["diffs"], diff, margin, rate)
    if resolves:
        return (
            (CHAMPION, f"paired difference {diff:+.4f} >= -{margin:g}")
            if diff >= t
            else (
                CHALLENGER,
                f"paired difference {diff:+.4f} < -{margin:g}: worse than the margin allows",
            )
        )
    where = (
        f"this split cannot resolve the margin {margin:g}, so the new version must reach {t:+.4f}"
    )
    return (
        (CHAMPION, f"paired difference {diff:+.4f}: better beyond chance ({where})")
        if diff >= t
        else (
            CHALLENGER,
            f"paired difference {diff:+.4f}: not better beyond chance ({where}); the champion stays",
        )
    )


def gate_record(
    paired: dict | None,
    margin: float,
    new_version: str,
    champion_version: str | None,
    rate: float = NULL_RATE,
    min_boxes: int = 10,
) -> dict:
    """The decision and its figures, as tags for the new version and metadata for the asset.
    `paired`: `metrics.paired_bootstrap(new, champion)` on the current test images, or None when there
    is no other champion (`champion_version` None: the first version; equal to `new_version`: the
    champion itself evaluated again)."""
    base = {
        "version": str(new_version),
        "margin": margin,
        "stated_null_rate": rate,
        "min_test_boxes": min_boxes,
        "rule": rule_text(margin, rate, min_boxes),
    }
    if paired is None:
        reason = (
            "the champion itself, evaluated again"
            if champion_version == str(new_version)
            else "first version: nothing to compare with"
        )
        return {**base, "decision": CHAMPION, "compared_with": None, "reason": reason}
    decision, why = decide(paired, margin, rate, min_boxes)
    decided = not why.startswith("cannot tell")
    if decided:
        t, resolves, rate_here = threshold(paired["diffs"], paired["diff"], margin, rate)
        null = np.asarray(paired["diffs"], float) - paired["diff"]
        # how likely the decision taken would be between two equally good models
        p_decision = float((null >= t).mean() if decision == CHAMPION else (null < t).mean())
    else:
        t, resolves, rate_here, p_decision = float("nan"), False, 0.0, 1.0
    lo, hi = (paired["ci_low"], paired["ci_high"]) if decided else (float("nan"), float("nan"))
    null = np.asarray(paired["diffs"], float) - paired["diff"]
    # one-sided: how often chance alone gives a difference at least this far from 0, on its side
    p_value = (
        float(
            (null >= paired["diff"]).mean()
            if paired["diff"] >= 0
            else (null <= paired["diff"]).mean()
        )
        if len(null) and decided
        else float("nan")
    )
    counts = f"{paired['images']} test images, {paired.get('patients')} patients, {int(paired.get('boxes', 0))} boxes"
    reason = (
        f"{why} (95% CI {lo:+.4f} to {hi:+.4f}; {counts}; between two equally good models this decision "
        f"would come {p_decision:.0%} of the time)"
        if decided
        else f"{why} ({counts})"
    )
    return {
        **base,
        "decision": decision,
        "compared_with": str(champion_version),
        "threshold": t,
        "split_resolves_margin": resolves,
        "null_rate": rate_here,
        "null_probability_of_decision": p_decision,
        "p_value": p_value,
        "new_map50": paired["a"],
        "champion_map50": paired["b"],
        "diff": paired["diff"],
        "diff_ci_low": lo,
        "diff_ci_high": hi,
        "test_images": paired["images"],
        "test_patients": paired.get("patients"),
        "test_boxes": int(paired.get("boxes", 0)),
        "resamples": paired.get("resamples"),
        "seed": paired.get("seed"),
        "non_inferior": bool(lo >= -margin) if not math.isnan(lo) else False,
        "reason": reason,
    }
