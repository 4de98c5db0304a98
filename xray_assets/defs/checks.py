"""Asset checks that count quarantined input rows against the profile's limit."""

import dagster as dg

from ..core import layout
from .nih import nih_boxes, nih_labels
from .resources import XrayResource
from .vinbigdata import vinbigdata_annotations


def _quarantine_check(asset, parts: tuple[str, ...], name: str):
    @dg.asset_check(
        asset=asset, name=name, description="Quarantined input rows stay under the profile's limit."
    )
    def _check(xray: XrayResource) -> dg.AssetCheckResult:
        q = xray.storage.read_parquet(*parts)
        limit = xray.config.max_quarantine_rows
        reasons = q["reason"].value_counts().to_dict() if len(q) else {}
        return dg.AssetCheckResult(
            passed=len(q) <= limit,
            metadata={
                "quarantined_rows": len(q),
                "limit": limit,
                "reasons": "; ".join(f"{k} ({v})" for k, v in reasons.items()) or "none",
                "first_rows": "; ".join(f"{r.source} row {r.row}" for r in q.head(5).itertuples())
                or "none",
            },
        )

    return _check


quarantine_checks = [
    _quarantine_check(nih_labels, layout.NIH_LABELS_QUARANTINE, "nih_labels_quarantine"),
    _quarantine_check(nih_boxes, layout.NIH_BOXES_QUARANTINE, "nih_boxes_quarantine"),
    _quarantine_check(
        vinbigdata_annotations,
        layout.VBD_ANNOTATIONS_QUARANTINE,
        "vinbigdata_annotations_quarantine",
    ),
]

defs = dg.Definitions(asset_checks=quarantine_checks)
