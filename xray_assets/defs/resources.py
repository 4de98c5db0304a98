"""The one resource every asset uses: where data and artefacts live, and which profile runs."""


from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import Profile, Settings, default_inbox, default_mlflow_uri, get_profile
from ..core.classes import TASK_NAMES
from ..storage import Storage

TASK_PARTITIONS = dg.StaticPartitionsDefinition(list(TASK_NAMES))
#: VinBigData conversion splits into shards (by image id) so workers or pods can share the work.
CONVERSION_SHARDS = 4
SHARD_PARTITIONS = dg.StaticPartitionsDefinition([f"shard-{i}" for i in range(CONVERSION_SHARDS)])


#: Per-step Kubernetes settings (read by dagster-k8s's K8sRunLauncher / k8s_job_executor; ignored
#: when running locally). Training, tuning and evaluation ask for one GPU and tolerate GPU nodes.
GPU_STEP_TAGS = {"dagster-k8s/config": {
    "container_config": {"resources": {"requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
                                       "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "node_selector": {"xray-assets/accelerator": "gpu"}},
}}
#: DICOM conversion: CPU-heavy; each shard partition is its own run, hence its own pod.
CONVERSION_STEP_TAGS = {"dagster-k8s/config": {
    "container_config": {"resources": {"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}},
}}


class XrayResource(dg.ConfigurableResource):
    data_dir: str = Field(description="holds nih/ and vinbigdata/ in their native layouts")
    storage_dir: str = Field(description="every artefact the graph writes")
    profile: str = Field(default="demo", description="study, demo or smoke")
    mlflow_tracking_uri: str = Field(default="", description="empty: the embedded store under storage_dir")
    mlflow_ui_url: str = Field(default="http://127.0.0.1:5000", description="for links in metadata")
    inbox_dir: str = Field(default="", description="annotation drops; empty: <data_dir>/inbox")
    champion_margin: float = Field(default=0.01, description="test mAP50 a new model may lose and still be champion")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "XrayResource":
        import os

        s = settings or Settings.from_env()
        return cls(data_dir=str(s.data_dir), storage_dir=str(s.storage_dir), profile=s.profile,
                   mlflow_tracking_uri=s.mlflow_tracking_uri,
                   mlflow_ui_url=os.environ.get("XRAY_MLFLOW_UI", "http://127.0.0.1:5000"),
                   inbox_dir=str(s.inbox_dir or ""), champion_margin=s.champion_margin)

    @property
    def storage(self) -> Storage:
        return Storage(self.storage_dir)

    @property
    def config(self) -> Profile:
        return get_profile(self.profile)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or default_mlflow_uri(self.storage_dir)

    @property
    def inbox(self) -> Path:
        return Path(self.inbox_dir) if self.inbox_dir else default_inbox(self.data_dir)

    def data(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        base = self.tracking_uri if self.tracking_uri.startswith("http") else self.mlflow_ui_url
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def md_image(path: Path) -> dg.MetadataValue:
    """An image inline in the asset's metadata (the UI renders Markdown with a data URI)."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{Path(path).name}](data:image/png;base64,{data})")


def table_md(df) -> dg.MetadataValue:
    from ..core.report import md_table

    return dg.MetadataValue.md(md_table(df))


def ingest_table(context, xray: XrayResource, reader, src: Path, folder: str, name: str) -> dict:
    """Read a label file with a `*_checked` reader, write the table and its quarantine beside it,
    log each quarantined row (file and row), and return the common metadata plus the tables."""
    df, quarantine = reader(src)
    st = xray.storage
    st.write_parquet(df, folder, f"{name}.parquet")
    st.write_parquet(quarantine, folder, f"{name}_quarantine.parquet")
    for r in quarantine.head(50).itertuples(index=False):
        context.log.warning(f"{r.source} row {r.row}: {r.reason}")
    if len(quarantine) > 50:
        context.log.warning(f"{src.name}: {len(quarantine) - 50} more quarantined row(s)")
    return {"table": df, "quarantine": quarantine, "metadata": {
        "path": dg.MetadataValue.path(str(st.root / folder / f"{name}.parquet")),
        "dagster/row_count": len(df),
        "quarantined_rows": len(quarantine),
    }}
