"""`xray-assets`: sample data, materialising the study, serving the models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

#: The graph in runs: a Dagster run covers assets of one partitions definition.
STAGES: list[tuple[str, list[str], str | None]] = [
    ("ingest", ["nih_labels", "nih_boxes", "vinbigdata_annotations"], None),
    ("convert", ["vinbigdata_images"], "shards"),
    ("consensus+splits", ["vinbigdata_boxes", "background_samples", "patient_splits"], None),
    ("tasks", ["yolo_datasets", "trained_models", "nms_thresholds", "evaluation_reports"], "tasks"),
    ("report", ["study_report"], None),
]


def _ensure_dagster_home() -> None:
    if not os.environ.get("DAGSTER_HOME"):
        home = Path("dagster_home").resolve()
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)


def cmd_sample_data(args) -> int:
    from .core.synthetic import write_sample_data

    t0 = time.time()
    stats = write_sample_data(args.out_dir, size=args.size, seed=args.seed)
    print(json.dumps(stats))
    print(f"sample data written to {Path(args.out_dir).resolve()} in {time.time() - t0:.0f}s")
    return 0


def cmd_sample_drop(args) -> int:
    from .config import Settings
    from .core.synthetic import write_drop

    inbox = Path(args.inbox) if args.inbox else Settings.from_env().inbox_dir
    folder = write_drop(inbox / args.name, args.format, n_annotated=args.size, seed=args.seed,
                        ready=not args.no_ready)
    print(f"{args.format} drop written to {folder}" + ("" if args.no_ready else " (READY)"))
    return 0


def materialize_graph(profile: str | None = None, select: list[str] | None = None, tasks: list[str] | None = None,
                      instance=None, xray=None, raise_on_error: bool = True, log_level: str = "INFO") -> list:
    """Materialise the graph stage by stage, every run recorded in the Dagster instance."""
    import dagster as dg

    from .config import Settings
    from .core.classes import TASK_NAMES
    from .definitions import ASSETS, CHECKS
    from .defs.resources import SHARD_PARTITIONS, XrayResource

    settings = Settings.from_env()
    if profile:
        settings = dataclasses.replace(settings, profile=profile)
    if xray is None:
        xray = XrayResource.from_settings(settings)
    instance = instance or dg.DagsterInstance.get()
    results = []
    for name, keys, parts in STAGES:
        keys = [k for k in keys if not select or k in select]
        if not keys:
            continue
        if parts == "shards":
            partition_keys = SHARD_PARTITIONS.get_partition_keys()
        elif parts == "tasks":
            partition_keys = tasks or list(TASK_NAMES)
        else:
            partition_keys = [None]
        for pk in partition_keys:
            t0 = time.time()
            label = f"{name}" + (f" [{pk}]" if pk else "")
            print(f"==> {label}: {', '.join(keys)}", flush=True)
            res = dg.materialize(
                [*ASSETS, *CHECKS], selection=keys, partition_key=pk, instance=instance,
                resources={"xray": xray}, raise_on_error=raise_on_error,
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                tags={"xray/profile": xray.profile, "xray/stage": name},
            )
            results.append(res)
            print(f"    {label}: {'ok' if res.success else 'FAILED'} in {time.time() - t0:.0f}s "
                  f"(run {res.run_id})", flush=True)
    return results


def cmd_materialize(args) -> int:
    _ensure_dagster_home()
    from .config import Settings
    from .core.classes import TASK_NAMES
    from .storage import Storage

    select = [s.strip() for s in args.select.split(",")] if args.select else None
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    t0 = time.time()
    materialize_graph(args.profile, select, tasks)
    settings = Settings.from_env()
    st = Storage(settings.storage_dir)
    print(f"\nmaterialised in {time.time() - t0:.0f}s (profile {args.profile or settings.profile})")
    rows = []
    for t in tasks or TASK_NAMES:
        if st.exists("reports", t, "summary.json"):
            s = st.read_json("reports", t, "summary.json")
            if s["map50"] is None:
                rows.append(f"  {t:22s} test mAP50 n/a (the test split has no boxes of this task)")
                continue
            rows.append(f"  {t:22s} test mAP50 {s['map50']:.3f}  recall {s['recall']:.3f}  "
                        f"(conf {s['conf']:g}, iou {s['iou']:g}; {s['test_images']} images, {s['test_boxes']} boxes)")
    if rows:
        print("per-task test metrics:")
        print("\n".join(rows))
    if st.exists("reports", "study", "report.html"):
        print(f"study report: {st.root / 'reports' / 'study' / 'report.html'}")
    print("Dagster UI: make ui, then http://127.0.0.1:3000 ; MLflow UI: http://127.0.0.1:5000 "
          f"(store {settings.mlflow_tracking_uri})")
    return 0


def cmd_serve(args) -> int:
    from .serve.app import serve

    serve(host=args.host, port=args.port, backend=args.backend)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xray-assets", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample-data", help="write NIH- and VinBigData-format sample data")
    s.add_argument("out_dir")
    s.add_argument("--size", type=int, default=160, help="annotated images per dataset (default 160)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_sample_data)
    d = sub.add_parser("sample-drop", help="write a sample annotation drop (new patients) into the inbox")
    d.add_argument("name", help="the drop's folder name")
    d.add_argument("--format", choices=["nih", "vinbigdata"], default="nih")
    d.add_argument("--size", type=int, default=6, help="annotated images in the drop")
    d.add_argument("--seed", type=int, default=101)
    d.add_argument("--inbox", default=None, help="default: $XRAY_INBOX_DIR or <XRAY_DATA_DIR>/inbox")
    d.add_argument("--no-ready", action="store_true", help="leave out the READY marker")
    d.set_defaults(fn=cmd_sample_drop)
    m = sub.add_parser("materialize", help="materialise the graph, every task partition")
    m.add_argument("--profile", default=None, help="study, demo or smoke (default: $XRAY_PROFILE or demo)")
    m.add_argument("--select", default=None, help="comma-separated asset keys (default: all)")
    m.add_argument("--tasks", default=None, help="comma-separated task partitions (default: all six)")
    m.set_defaults(fn=cmd_materialize)
    v = sub.add_parser("serve", help="the web app: four served models side by side on an upload")
    v.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--backend", choices=["openvino", "onnx", "pytorch"], default="openvino",
                   help="openvino (default) or onnx: an export cached per model version; pytorch: the .pt weights")
    v.set_defaults(fn=cmd_serve)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
