"""The one resource every asset uses (where data and artefacts live, which profile runs), the
partitions, and the metadata helpers that keep the catalog readable and the event log small."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from .. import layout
from ..config import (
    Profile,
    decode_limits,
    default_inbox,
    default_mlflow_uri,
    default_weights_dir,
    env,
    get_profile,
)
from ..core.classes import TASK_NAMES
from ..core.isolation import DecodeLimits
from ..storage import Storage

TASK_PARTITIONS = dg.StaticPartitionsDefinition(list(TASK_NAMES))
#: VinBigData conversion splits into shards (by image id) so workers or pods can share the work.
CONVERSION_SHARDS = 4
SHARD_PARTITIONS = dg.StaticPartitionsDefinition([f"shard-{i}" for i in range(CONVERSION_SHARDS)])
#: one partition per accepted annotation drop (added by the `new_annotations` sensor)
DROP_PARTITIONS = dg.DynamicPartitionsDefinition(name="annotation_drops")
PROFILE_TAG = "xray/profile"

#: Per-step Kubernetes settings (read by dagster-k8s's K8sRunLauncher / k8s_job_executor; ignored
#: when running locally). Training, tuning and evaluation ask for one GPU and tolerate GPU nodes.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "node_selector": {"xray-assets/accelerator": "gpu"},
        },
    }
}
#: DICOM conversion: CPU-heavy; each shard partition is its own run, hence its own pod.
CONVERSION_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}
        },
    }
}

#: resource field -> the environment variable it is bound to (defaults: config.ENV_DEFAULTS)
ENV_FIELDS = {
    "data_dir": "XRAY_DATA_DIR",
    "storage_dir": "XRAY_STORAGE_DIR",
    "profile": "XRAY_PROFILE",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_ui_url": "XRAY_MLFLOW_UI",
    "inbox_dir": "XRAY_INBOX_DIR",
    "champion_margin": "XRAY_CHAMPION_MARGIN",
    "weights_dir": "XRAY_WEIGHTS_DIR",
}
_env = env


class XrayResource(dg.ConfigurableResource):
    """Settings bound to the environment (`dg.EnvVar`: the UI names the variable, the value is read
    when a run starts); any field can be set per run in the Launchpad, for instance only
    `resources: xray: config: profile: smoke` (a field left empty reads its variable, or its
    default). Every run that uses it is tagged with its profile, and the profile's artefacts live
    under `<storage_dir>/<profile>/`."""

    data_dir: str = Field(
        default="",
        description="holds nih/ and vinbigdata/ in their native layouts "
        "(empty: $XRAY_DATA_DIR, else data/sample)",
    )
    storage_dir: str = Field(
        default="",
        description="every artefact the graph writes: a folder or s3://bucket/prefix "
        "(empty: $XRAY_STORAGE_DIR, else storage)",
    )
    profile: str = Field(
        default="",
        description="study, demo or smoke: the run's settings and storage namespace "
        "(empty: $XRAY_PROFILE, else demo)",
    )
    mlflow_tracking_uri: str = Field(
        default="", description="empty: $MLFLOW_TRACKING_URI, else the embedded store"
    )
    mlflow_ui_url: str = Field(
        default="", description="for links in metadata (empty: $XRAY_MLFLOW_UI)"
    )
    inbox_dir: str = Field(
        default="", description="annotation drops (empty: $XRAY_INBOX_DIR, else <data_dir>/inbox)"
    )
    champion_margin: str = Field(
        default="",
        description="test mAP50 a new model may lose and still be champion "
        "(empty: $XRAY_CHAMPION_MARGIN, else 0.01)",
    )
    weights_dir: str = Field(
        default="",
        description="pretrained checkpoints (empty: $XRAY_WEIGHTS_DIR, else "
        "~/.cache/xray-assets/weights)",
    )

    @classmethod
    def from_env(cls) -> "XrayResource":
        """The code location's resource: each field whose variable is set is bound to it (`dg.EnvVar`:
        read when a run starts, named in the UI); a field left empty reads its default when used.
        Nothing is written into os.environ."""
        return cls(**{f: dg.EnvVar(var) for f, var in ENV_FIELDS.items() if os.environ.get(var)})

    @property
    def profile_name(self) -> str:
        return self.profile or _env("XRAY_PROFILE")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        name = get_profile(
            self.profile_name
        ).name  # an unknown profile fails the run here, with the choices
        run = context.run
        if run is not None and context.instance is not None and run.tags.get(PROFILE_TAG) != name:
            context.instance.add_run_tags(run.run_id, {PROFILE_TAG: name})

    # -- where things are ----------------------------------------------------------------------
    @property
    def root(self) -> str:
        raw = str(self.storage_dir or _env("XRAY_STORAGE_DIR"))
        return raw.rstrip("/") if "://" in raw else str(Path(raw).expanduser().resolve())

    @property
    def storage(self) -> Storage:
        """This profile's artefacts: <storage_dir>/<profile>/ (profiles never overwrite each other)."""
        name = self.profile_name
        return Storage(f"{self.root}/{name}" if "://" in self.root else Path(self.root) / name)

    @property
    def shared(self) -> Storage:
        """What all profiles share: accepted annotation drops (data, not results)."""
        return Storage(self.root)

    @property
    def config(self) -> Profile:
        return get_profile(self.profile_name)

    @property
    def tracking_uri(self) -> str:
        return (
            self.mlflow_tracking_uri or env("MLFLOW_TRACKING_URI") or default_mlflow_uri(self.root)
        )

    @property
    def margin(self) -> float:
        return float(self.champion_margin or _env("XRAY_CHAMPION_MARGIN"))

    @property
    def inbox(self) -> Path:
        raw = self.inbox_dir or env("XRAY_INBOX_DIR")
        return Path(raw).expanduser().resolve() if raw else default_inbox(self.data())

    @property
    def weights(self) -> Path:
        raw = self.weights_dir or env("XRAY_WEIGHTS_DIR")
        return Path(raw).expanduser().resolve() if raw else default_weights_dir()

    @property
    def decode(self) -> DecodeLimits:
        """The pixel budget and the isolated decoders' limits (XRAY_MAX_MEGAPIXELS, XRAY_DECODE_*)."""
        return decode_limits()

    def data(self, *parts: str) -> Path:
        return Path(self.data_dir or _env("XRAY_DATA_DIR")).expanduser().resolve().joinpath(*parts)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        base = (
            self.tracking_uri
            if self.tracking_uri.startswith("http")
            else (self.mlflow_ui_url or _env("XRAY_MLFLOW_UI"))
        )
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def share_cores() -> int:
    """Give this step its share of the machine's cores (torch threads): XRAY_TORCH_THREADS, else half
    of them, since the local instance runs two runs side by side. Returns the thread count."""
    import torch

    n = int(os.environ.get("XRAY_TORCH_THREADS") or max(1, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(n)
    return n


# -- metadata a team can read ----------------------------------------------------------------------
THUMB_WIDTH = 360


def thumbnail(path: Path | str, width: int = THUMB_WIDTH) -> dg.MetadataValue:
    """A small JPEG of a plot inline (a few tens of KB, not the full PNG); the full-size file stays
    under the storage root, linked by path."""
    import base64

    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return dg.MetadataValue.path(str(path))
    if img.shape[1] > width:
        img = cv2.resize(
            img, (width, int(img.shape[0] * width / img.shape[1])), interpolation=cv2.INTER_AREA
        )
    data = base64.b64encode(
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    ).decode()
    return dg.MetadataValue.md(f"![{Path(path).name}](data:image/jpeg;base64,{data})")


def _column_type(dtype) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "string"


def table_value(df, max_rows: int = 60) -> dg.MetadataValue:
    """A small table as Dagster's own table metadata (typed columns; the UI sorts and shows it)."""
    import math

    df = df.head(max_rows)
    schema = dg.TableSchema(
        columns=[dg.TableColumn(str(c), _column_type(df[c].dtype)) for c in df.columns]
    )
    records = []
    for row in df.itertuples(index=False):
        values = {}
        for c, v in zip(df.columns, row):
            if isinstance(v, float):
                v = None if math.isnan(v) else round(v, 4)
            elif hasattr(v, "item"):
                v = v.item()
            elif v is not None and not isinstance(v, (int, str, bool)):
                v = str(v)
            values[str(c)] = v
        records.append(dg.TableRecord(values))
    return dg.MetadataValue.table(records=records, schema=schema)


def column_schema(columns: dict[str, tuple[str, str]]) -> dg.TableSchema:
    """name -> (type, description): a table asset's `dagster/column_schema`."""
    return dg.TableSchema(
        columns=[dg.TableColumn(n, t, description=d) for n, (t, d) in columns.items()]
    )


def ingest_table(
    context, st: Storage, reader, src: Path, folder: str, name: str, limit: int
) -> dict:
    """Read a label file with a `*_checked` reader, write the table and its quarantine beside it,
    log each quarantined row (file and row), and return the tables and the common metadata."""
    df, quarantine = reader(src)
    for r in quarantine.head(50).itertuples(index=False):
        context.log.warning(f"{r.source} row {r.row}: {r.reason}")
    if len(quarantine) > 50:
        context.log.warning(f"{src.name}: {len(quarantine) - 50} more quarantined row(s)")
    st.write_parquet(quarantine, *layout.quarantine(folder, name))
    return {
        "table": df,
        "quarantine": quarantine,
        "metadata": {"quarantined_rows": len(quarantine), "quarantine_limit": limit},
    }
