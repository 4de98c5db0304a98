"""The cost of an s3:// storage root against a local folder, in the same run: the smoke graph for one
task on converted VinBigData images (united_multi), one asset at a time as `k8s_job_executor` runs
steps, against moto's S3 server on 127.0.0.1. Two object-store rows: the mirror kept between steps
(one machine) and the mirror wiped before every step (each step on a fresh pod)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

TASKS = ["united_multi"]


def _materialise(xray, mirror: Path | None) -> float:
    import dagster as dg

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import STAGES, materialize_stages

    t0 = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance, contextlib.redirect_stdout(io.StringIO()):
        for _, keys, _ in STAGES:
            for key in keys:
                if mirror is not None:
                    shutil.rmtree(mirror, ignore_errors=True)
                results = materialize_stages(xray, instance, select=[key], tasks=TASKS)
                assert all(r.success for r in results), key
    return time.perf_counter() - t0


def main() -> list[dict]:
    import boto3

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from services import s3_server

    from xray_assets.config import configure_ultralytics
    from xray_assets.core.synthetic import write_sample_data
    from xray_assets.defs.resources import XrayResource
    from xray_assets.storage import Storage

    configure_ultralytics()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        write_sample_data(data, size=16, seed=3, vinbigdata_max_side=700)

        def resource(storage: str, name: str) -> XrayResource:
            return XrayResource(
                data_dir=str(data),
                storage_dir=storage,
                profile="smoke",
                mlflow_tracking_uri=f"sqlite:///{tmp / name}.db",
            )

        _materialise(resource(str(tmp / "warm-up"), "warm-up"), None)  # imports, first-use costs
        local = _materialise(resource(str(tmp / "local"), "local"), None)
        with (
            mock.patch.dict(os.environ, {**env, "XRAY_CACHE_DIR": str(tmp / "cache")}),
            s3_server(tmp) as endpoint,
        ):
            os.environ["AWS_ENDPOINT_URL"] = (
                endpoint  # (patch.dict restores the environment on exit)
            )
            s3 = boto3.client("s3", endpoint_url=endpoint)
            for bucket, wipe in (("bench-kept", False), ("bench-fresh", True)):
                s3.create_bucket(Bucket=bucket)
                url = f"s3://{bucket}/study"
                seconds = _materialise(resource(url, bucket), Storage(url).mirror if wipe else None)
                rows.append(
                    {
                        "benchmark": "s3 root, fresh pod per step"
                        if wipe
                        else "s3 root, one machine",
                        "ours_s": seconds,
                        "baseline_s": local,
                        "speedup": local / seconds,
                        "baseline": "the same steps on a local storage root",
                    }
                )
    return rows


if __name__ == "__main__":
    for r in main():
        print(
            f"{r['benchmark']:28s} {r['ours_s']:8.1f} s vs {r['baseline_s']:8.1f} s  {r['speedup']:.2f}x  ({r['baseline']})"
        )
