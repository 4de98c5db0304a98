"""The storage layout: where each artefact that assets hand each other lives under a profile's
storage root, each file name spelled here once.

Paths are tuples of parts for `Storage` (`st.read_parquet(*layout.NIH_LABELS)`,
`st.read_json(*layout.model_info(task))`); what a single asset writes for people (plots, Markdown)
stays beside that asset.
"""

from __future__ import annotations

from pathlib import Path

# -- the label tables (and their quarantines) ---------------------------------------------------
NIH_LABELS = ("nih", "labels.parquet")
NIH_BOXES = ("nih", "boxes.parquet")
VBD_ANNOTATIONS = ("vinbigdata", "annotations.parquet")
VBD_BOXES = ("vinbigdata", "boxes.parquet")


def quarantine(folder: str, name: str) -> tuple[str, str]:
    """The rows a label table's reader set aside (nih/labels_quarantine.parquet)."""
    return folder, f"{name}_quarantine.parquet"


NIH_LABELS_QUARANTINE = quarantine("nih", "labels")
NIH_BOXES_QUARANTINE = quarantine("nih", "boxes")
VBD_ANNOTATIONS_QUARANTINE = quarantine("vinbigdata", "annotations")


def conversion_manifest(shard: str) -> tuple[str, str, str]:
    """One conversion shard's manifest: id, path, sizes, source hash, status of each DICOM."""
    return "vinbigdata", "images", f"manifest-{shard}.parquet"


#: the accepted drops, under the storage root shared by the profiles: a folder each
DROPS = ("drops",)
#: a drop's commit: from the moment it is written the label assets read the drop
DROP_COMMIT = "drop.json"


def drop(key: str, name: str = "") -> tuple[str, ...]:
    """An accepted drop's folder (or a file or folder in it: `images`, `dicom`)."""
    return (*DROPS, key, name) if name else (*DROPS, key)


def drop_commit(key: str) -> tuple[str, ...]:
    return drop(key, DROP_COMMIT)


def drop_table(key: str, table: str) -> tuple[str, ...]:
    """One of a drop's tables (labels, boxes, annotations, deleted, kept_out, tasks)."""
    return drop(key, f"{table}.parquet")


#: the key annotators' pseudonyms are hashed with (under the shared root; made once, never logged)
PSEUDONYM_KEY = (*DROPS, ".pseudonym-key")


# -- splits and the task datasets ----------------------------------------------------------------
SPLITS = ("datasets", "splits.parquet")


def dataset(task: str) -> tuple[str, str]:
    return "datasets", task


def dataset_images(task: str) -> tuple[str, str, str]:
    return (*dataset(task), DATASET_IMAGES)


def dataset_boxes(task: str) -> tuple[str, str, str]:
    return (*dataset(task), DATASET_BOXES)


def dataset_excluded(task: str) -> tuple[str, str, str]:
    return (*dataset(task), DATASET_EXCLUDED)


#: inside a dataset folder (built in a temporary folder, then moved in whole)
DATASET_IMAGES, DATASET_BOXES, DATASET_EXCLUDED = (
    "images.parquet",
    "boxes.parquet",
    "excluded.parquet",
)
DATASET_HASH, DATA_YAML = "dataset_hash.txt", "data.yaml"

# -- models, their detection rule ----------------------------------------------------------------


def model_info(task: str) -> tuple[str, str, str]:
    """model.json: the trained model's record (run, version, imgsz, init...)."""
    return "models", task, "model.json"


#: ultralytics' checkpoint names (its run folder, MLflow's `weights/` artefacts, our models/<task>/)
BEST_WEIGHTS, LAST_WEIGHTS = "best.pt", "last.pt"


def weights(task: str) -> tuple[str, str, str]:
    return "models", task, BEST_WEIGHTS


def training_curves(task: str) -> tuple[str, str, str]:
    """Our plot of the training's per-epoch losses and metrics."""
    return "models", task, "training_curves.png"


def tuning(task: str, name: str) -> tuple[str, str, str]:
    """A file of a task's NMS tuning (its grid, the grid's heatmap, the chosen rule)."""
    return "tuning", task, name


def rule(task: str) -> tuple[str, str, str]:
    """The tuned detection rule (conf, iou, ...)."""
    return tuning(task, "best.json")


def served_version(task: str, version) -> tuple[str, str, str]:
    """A registered version's weights and exports, fetched for serving (or re-scoring)."""
    return "serve", task, f"v{version}"


# -- evaluation and the gate ---------------------------------------------------------------------


def report(task: str, name: str = "report.html") -> tuple[str, str, str]:
    """A task's (or "study"'s) report folder file; the HTML report by default."""
    return "reports", task, name


def summary(task: str) -> tuple[str, str, str]:
    return report(task, "summary.json")


def detections(task: str) -> tuple[str, str, str]:
    """The rule's detections at the AP floor on every test image."""
    return report(task, "detections.parquet")


def ground_truth(task: str) -> tuple[str, str, str]:
    return report(task, "ground_truth.parquet")


def test_images(task: str) -> tuple[str, str, str]:
    """The evaluated test images (image_id, source, group: the patient)."""
    return report(task, "test_images.parquet")


def gate_record(task: str) -> tuple[str, str, str]:
    """champion.json: the champion gate's latest decision and its figures."""
    return report(task, "champion.json")


def champion_detections(task: str) -> tuple[str, str, str]:
    return report(task, "champion_detections.parquet")


# -- the annotation loop -------------------------------------------------------------------------


def queue(task: str) -> tuple[str, str, str]:
    """The task's ranked annotation queue."""
    return "annotation", task, "queue.parquet"


def queue_scores(task: str) -> tuple[str, str, str]:
    """The acquisition scores, cached per (image, model version)."""
    return "annotation", task, "scores.parquet"


def batches_table(task: str) -> tuple[str, str, str]:
    """Every exported batch's images and their status (pending until their drop is committed)."""
    return "annotation", task, "batches.parquet"


#: the exported batches, a folder each: its images, the images' table, COCO, CVAT, the project
BATCHES = ("annotation", "batches")
BATCH_IMAGES, BATCH_COCO, BATCH_CVAT, BATCH_PROJECT = (
    "images.parquet",
    "coco.json",
    "cvat.xml",
    "label_studio.json",
)


def batch(key: str, name: str = "") -> tuple[str, ...]:
    """An exported batch's folder (its images, COCO and CVAT files, the Label Studio project)."""
    return (*BATCHES, key, name) if name else (*BATCHES, key)


# -- Label Studio: the service `make annotate` starts ----------------------------------------------
#: under the storage root itself (all profiles): the service's database and `service.json` (its URL,
#: admin, password and API token, generated at the first `make annotate`, readable by the owner only)
LABEL_STUDIO_HOME = ("label-studio",)
LABEL_STUDIO_SERVICE = (*LABEL_STUDIO_HOME, "service.json")


def label_studio_document_root(storage_dir) -> Path:
    """The one folder Label Studio serves local files from: the storage root itself, so that every
    profile's batch images (`<storage_dir>/<profile>/annotation/batches/...`) lie under it. `make
    annotate` starts the service with it; a batch's image URLs are relative to it."""
    return Path(storage_dir).expanduser().resolve()
