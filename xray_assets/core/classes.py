"""Class maps of the study (docs/study.md) and the six task definitions."""

from __future__ import annotations

from dataclasses import dataclass

NIH_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)

#: Data_Entry_2017 spells one finding differently from the box list.
NIH_FINDING_ALIASES: dict[str, str] = {"Infiltration": "Infiltrate"}

UNITED_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass/Nodule",
    "Pneumonia",
    "Pneumothorax",
)

NIH_TO_UNITED: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Effusion",
    "Infiltrate": "Infiltrate",
    "Mass": "Mass/Nodule",
    "Nodule": "Mass/Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}

#: VinBigData's 15 class ids (train.csv `class_id`), as published by the competition.
VINBIGDATA_CLASSES: dict[int, str] = {
    0: "Aortic enlargement",
    1: "Atelectasis",
    2: "Calcification",
    3: "Cardiomegaly",
    4: "Consolidation",
    5: "ILD",
    6: "Infiltration",
    7: "Lung Opacity",
    8: "Nodule/Mass",
    9: "Other lesion",
    10: "Pleural effusion",
    11: "Pleural thickening",
    12: "Pneumothorax",
    13: "Pulmonary fibrosis",
    14: "No finding",
}
VINBIGDATA_NO_FINDING = 14

#: VinBigData class_id -> united class. Ids not listed are outside the study's six.
VINBIGDATA_TO_UNITED: dict[int, str] = {
    1: "Atelectasis",
    3: "Cardiomegaly",
    10: "Effusion",
    6: "Infiltrate",
    8: "Mass/Nodule",
    12: "Pneumothorax",
}

BINARY_CLASS = "abnormality"


@dataclass(frozen=True)
class TaskSpec:
    """One training task: which source boxes it uses and how labels map to its classes."""

    name: str
    source: str  # "nih" (NIH only, NIH class names) or "united" (both datasets, united names)
    classes: tuple[str, ...]
    #: united/NIH label -> task class; labels absent from the map are not boxes of this task
    label_map: dict[str, str]
    #: class-agnostic NMS in the task's detection rule (tuning, evaluation and serving alike)
    agnostic_nms: bool = False

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def _identity(names) -> dict[str, str]:
    return {n: n for n in names}


TASKS: dict[str, TaskSpec] = {
    "nih_multi": TaskSpec("nih_multi", "nih", NIH_CLASSES, _identity(NIH_CLASSES)),
    "nih_binary": TaskSpec(
        "nih_binary", "nih", (BINARY_CLASS,), {n: BINARY_CLASS for n in NIH_CLASSES}
    ),
    # the study's demo served united_multi with class-agnostic NMS: its rule is agnostic everywhere
    "united_multi": TaskSpec(
        "united_multi", "united", UNITED_CLASSES, _identity(UNITED_CLASSES), agnostic_nms=True
    ),
    "united_binary": TaskSpec(
        "united_binary", "united", (BINARY_CLASS,), {n: BINARY_CLASS for n in UNITED_CLASSES}
    ),
    "united_cardiomegaly": TaskSpec(
        "united_cardiomegaly", "united", ("Cardiomegaly",), {"Cardiomegaly": "Cardiomegaly"}
    ),
    "united_mass_nodule": TaskSpec(
        "united_mass_nodule", "united", ("Mass/Nodule",), {"Mass/Nodule": "Mass/Nodule"}
    ),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)

#: The study's served panel, in display order (united_multi's rule is class-agnostic: `agnostic_nms`).
SERVED_TASKS: tuple[str, ...] = (
    "united_multi",
    "united_binary",
    "united_cardiomegaly",
    "united_mass_nodule",
)
