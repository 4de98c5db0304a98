"""The one resource every asset uses (where data and artefacts live, which profile runs), the
partitions, and the metadata helpers that keep the catalog readable and the event log small."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import FIELD_ENV, Profile, Settings, current
from ..core import layout
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
    f: FIELD_ENV[f]
    for f in (
        "data_dir",
        "storage_dir",
        "profile",
        "mlflow_tracking_uri",
        "mlflow_ui_url",
        "inbox_dir",
        "champion_margin",
        "weights_dir",
    )
}


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
    def settings(self) -> Settings:
        """This run's settings: the fields set here, else their variables, else the defaults (one
        resolution, `config.Settings.resolve`, shared with the CLI and the web app)."""
        given = {f: getattr(self, f) for f in ENV_FIELDS}
        # outside a run (tests, the CLI) a bound field is still its `dg.EnvVar`
        return Settings.resolve(
            **{f: v.get_value() if isinstance(v, dg.EnvVar) else v for f, v in given.items()}
        )

    @property
    def profile_name(self) -> str:
        return self.settings.profile

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # an unknown profile fails the run here, with the choices
        name = self.config.name
        run = context.run
        if run is not None and context.instance is not None and run.tags.get(PROFILE_TAG) != name:
            context.instance.add_run_tags(run.run_id, {PROFILE_TAG: name})

    # -- where things are ----------------------------------------------------------------------
    @property
    def root(self) -> str:
        return str(self.settings.storage_dir)

    @property
    def storage(self) -> Storage:
        """This profile's artefacts: <storage_dir>/<profile>/ (profiles never overwrite each other)."""
        return self.settings.storage

    @property
    def shared(self) -> Storage:
        """What all profiles share: accepted annotation drops (data, not results)."""
        return self.settings.shared

    @property
    def config(self) -> Profile:
        return self.settings.config

    @property
    def tracking_uri(self) -> str:
        return self.settings.mlflow_tracking_uri

    @property
    def margin(self) -> float:
        return self.settings.champion_margin

    @property
    def inbox(self) -> Path:
        inbox = self.settings.inbox_dir
        assert inbox is not None
        return inbox

    @property
    def weights(self) -> Path:
        weights = self.settings.weights_dir
        assert weights is not None
        return weights

    @property
    def decode(self) -> DecodeLimits:
        """The pixel budget and the isolated decoders' limits (XRAY_MAX_MEGAPIXELS, XRAY_DECODE_*)."""
        return self.settings.decode

    def data(self, *parts: str) -> Path:
        return self.settings.data_dir.joinpath(*parts)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        s = self.settings
        base = (
            s.mlflow_tracking_uri if s.mlflow_tracking_uri.startswith("http") else s.mlflow_ui_url
        )
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def share_cores() -> int:
    """Give this step its share of the machine's cores (torch threads): XRAY_TORCH_THREADS, else half
    of them, since the local instance runs two runs side by side. Returns the thread count."""
    import torch

    n = current().threads()
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
