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

from . import layout
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
    #: where the weights started (core.train.Init)
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
