"""The small typed records assets hand each other, each read and written here and only here (its
file named in `layout`): the trained model's record, the detection rule, the evaluation summary
and the task dataset's manifest.

A record read from an older file keeps the fields it has (missing ones take their defaults, unknown
ones are dropped), so a storage root written by an earlier release still reads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .core import layout
from .core.champion import CHALLENGER, HELD
from .core.detection import DetectionRule

if TYPE_CHECKING:
    from .storage import Storage


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class ModelRecord:
    """models/<task>/model.json: what `trained_models` trained and registered."""

    task: str
    weights: str = ""
    run_id: str = ""
    experiment_id: str = ""
    #: the registry version (None: not registered)
    model_version: str | None = None
    registered_model: str = ""
    dataset_hash: str = ""
    profile: str = ""
    imgsz: int = 640
    classes: tuple[str, ...] = ()
    seconds: float = 0.0
    trained_on_synthetic: bool = False
    #: ultralytics' final validation metrics
    metrics: dict[str, float] = field(default_factory=dict)
    #: where the weights started (train.Init)
    init: str = "unknown"
    init_source: str = ""
    init_sha256: str = ""
    init_bytes: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRecord":
        d = _known(cls, d)
        if d.get("model_version") is not None:
            d["model_version"] = str(d["model_version"])
        d["classes"] = tuple(d.get("classes", ()))
        return cls(**d)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def read(cls, st: "Storage", task: str) -> "ModelRecord":
        return cls.from_dict(st.read_json(*layout.model_info(task)))

    @classmethod
    def find(cls, st: "Storage", task: str) -> "ModelRecord | None":
        """The record, or None before the task's first model."""
        return cls.read(st, task) if st.exists(*layout.model_info(task)) else None

    def write(self, st: "Storage") -> None:
        st.write_json(self.as_dict(), *layout.model_info(self.task))


def write_rule(st: "Storage", task: str, rule: DetectionRule, scores: dict[str, Any]) -> None:
    """tuning/<task>/best.json: the tuned rule and the val figures it was chosen by."""
    st.write_json({**rule.as_dict(), **scores}, *layout.rule(task))


def read_rule(st: "Storage", task: str) -> DetectionRule:
    return DetectionRule.from_dict(st.read_json(*layout.rule(task)))


def find_rule(st: "Storage", task: str) -> DetectionRule | None:
    return read_rule(st, task) if st.exists(*layout.rule(task)) else None


def _none_to_nan(d: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in d.items()}


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class EvaluationSummary:
    """reports/<task>/summary.json: the test split's figures (`core.evaluation`'s summary: the
    figures' names are that module's), the rule they were computed with and the model evaluated.
    NaN (a figure the split cannot give) is null in the file and NaN here."""

    task: str
    figures: dict[str, Any]
    rule: DetectionRule
    model_version: str | None = None
    init: str | None = None

    def write(self, st: "Storage") -> None:
        st.write_json(
            {
                **_nan_to_none(self.figures),
                "rule": self.rule.as_dict(),
                "conf": self.rule.conf,
                "iou": self.rule.iou,
                "model_version": self.model_version,
                "init": self.init,
            },
            *layout.summary(self.task),
        )

    @classmethod
    def read(cls, st: "Storage", task: str) -> "EvaluationSummary":
        d = dict(st.read_json(*layout.summary(task)))
        rule = DetectionRule.from_dict(d.pop("rule"))
        version, init = d.pop("model_version", None), d.pop("init", None)
        d.pop("conf", None), d.pop("iou", None)
        return cls(
            task,
            _none_to_nan(d),
            rule,
            None if version is None else str(version),
            init,
        )

    @classmethod
    def find(cls, st: "Storage", task: str) -> "EvaluationSummary | None":
        return cls.read(st, task) if st.exists(*layout.summary(task)) else None


@dataclass(frozen=True)
class DatasetManifest:
    """datasets/<task>/: what `yolo_datasets` built for a task, as training and evaluation read it."""

    task: str
    #: the content hash of the dataset (images, labels, splits): a changed hash means a new dataset
    dataset_hash: str
    #: ultralytics' dataset file (a local path: the mirror of an object-store root)
    data_yaml: str

    @classmethod
    def read(cls, st: "Storage", task: str) -> "DatasetManifest":
        root = st.local(*layout.dataset(task))  # (from an object store: with its linked images)
        return cls(
            task, (root / layout.DATASET_HASH).read_text().strip(), str(root / layout.DATA_YAML)
        )


@dataclass(frozen=True)
class GateRecord:
    """reports/<task>/gate.json: the champion gate's decision for one version, the rule it applied
    and the paired figures behind it (`core.champion.gate_record`'s, where there was a comparison).
    `decision` is what happened to the alias: champion, challenger, or held (nothing moved: a
    blocking check failed or the champion could not be re-scored); `decided` is the gate's own
    decision where a hold overrode it."""

    version: str
    decision: str
    reason: str
    rule: str = ""
    margin: float | None = None
    stated_null_rate: float | None = None
    min_test_boxes: int | None = None
    compared_with: str | None = None
    held_by: tuple[str, ...] = ()
    decided: str | None = None
    #: the paired comparison (None where there was none)
    threshold: float | None = None
    split_resolves_margin: bool | None = None
    null_rate: float | None = None
    null_probability_of_decision: float | None = None
    p_value: float | None = None
    new_map50: float | None = None
    champion_map50: float | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    test_images: int | None = None
    test_patients: int | None = None
    test_boxes: int | None = None
    resamples: int | None = None
    seed: int | None = None
    non_inferior: bool | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "GateRecord":
        d = _known(cls, d)
        d["held_by"] = tuple(d.get("held_by") or ())
        for key in ("version", "compared_with"):
            if d.get(key) is not None:
                d[key] = str(d[key])
        return cls(**d)

    def as_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        d["held_by"] = list(self.held_by)
        return d

    @property
    def compared(self) -> bool:
        """A paired comparison with another champion stands behind the decision."""
        return self.compared_with is not None and self.diff is not None

    def held(self, reason: str, held_by: list[str], decision: str) -> "GateRecord":
        """This record with its promotion held: the alias does not move; the gate's own decision is
        kept in `decided`."""
        return dataclasses.replace(
            self, decision=decision, decided=self.decision, held_by=tuple(held_by), reason=reason
        )

    def after_checks(
        self, failed: str, held: list[str], champion_version: str | None
    ) -> "GateRecord":
        """The gate's decision once its guards are read: a champion that could not be re-scored
        holds the promotion (fails closed: nothing to compare with is not "first version"); a
        failing blocking check holds it too, the gate's own decision kept in `decided`."""
        if failed:
            return dataclasses.replace(
                self.held(f"{failed}; the promotion is held", ["champion_rescored"], HELD),
                compared_with=champion_version,
            )
        if held:
            return self.held(
                f"held by failing check(s) {', '.join(held)}; the gate's own decision was "
                f"{self.decision} ({self.reason})",
                held,
                CHALLENGER if champion_version is not None else HELD,
            )
        return self

    def tags(self) -> dict[str, str]:
        """The decision as tags on the version (whole sentences: a team's MLflow database may keep
        tag values in a 5000-character column)."""
        out = {
            "gate_decision": self.decision,
            "gate_reason": self.reason[:1000],
            "gate_rule": self.rule[:1000],
            "gate_stated_null_rate": f"{self.stated_null_rate:g}",
            "gate_margin": f"{self.margin:g}",
            "gate_min_test_boxes": str(self.min_test_boxes),
            "gate_held_by": ",".join(self.held_by) or "none",
        }
        if self.compared:
            out.update(
                {
                    "gate_compared_with": str(self.compared_with),
                    "gate_diff": f"{self.diff:.6f}",
                    "gate_diff_ci_low": f"{self.diff_ci_low:.6f}",
                    "gate_diff_ci_high": f"{self.diff_ci_high:.6f}",
                    "gate_champion_map50": f"{self.champion_map50:.6f}",
                    "gate_null_rate": f"{self.null_rate:.4f}",
                    "gate_null_probability_of_decision": f"{self.null_probability_of_decision:.4f}",
                    "gate_test_boxes": str(self.test_boxes),
                    "gate_bootstrap": f"{self.resamples} resamples, seed {self.seed}",
                }
            )
        return out

    def metadata(self, interval: str = "") -> dict[str, Any]:
        """The decision as the asset's metadata (`interval`: the difference's 95% interval in
        words, as the reports write it)."""
        out: dict[str, Any] = {
            "decision": self.decision,
            "version": self.version,
            "reason": self.reason,
            "rule": self.rule,
            "stated_null_rate": self.stated_null_rate,
            "margin": self.margin,
            "held_by": ", ".join(self.held_by) or "none",
        }
        if self.compared:
            out.update(
                {
                    "champion_version": self.compared_with,
                    "new_map50": round(self.new_map50, 4),
                    "champion_map50_rescored": round(self.champion_map50, 4),
                    "diff": round(self.diff, 4),
                    "diff_ci95": interval,
                    "null_rate": round(self.null_rate, 4),
                    "test_boxes": self.test_boxes,
                    "null_probability_of_decision": round(self.null_probability_of_decision, 4),
                }
            )
        return out

    def write(self, st: "Storage", task: str) -> None:
        st.write_json(self.as_dict(), *layout.gate_record(task))
