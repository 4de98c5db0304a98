"""`xray-assets`: sample data, materialising the study, serving the models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import label_studio
from .core import layout


def cmd_sample_data(args) -> int:
    from .core.synthetic import write_sample_data

    t0 = time.time()

    def progress(message: str) -> None:
        print(f"[{time.time() - t0:5.0f}s] {message}", flush=True)

    stats = write_sample_data(args.out_dir, size=args.size, seed=args.seed, progress=progress)
    print(json.dumps(stats))
    print(f"sample data written to {Path(args.out_dir).resolve()} in {time.time() - t0:.0f}s")
    return 0


def cmd_sample_drop(args) -> int:
    import zlib

    from .config import current
    from .core.synthetic import write_drop

    inbox = Path(args.inbox) if args.inbox else current().inbox_dir
    # by default the seed follows the name: batch-1 and batch-2 are different patients
    seed = args.seed if args.seed is not None else zlib.crc32(args.name.encode()) % 9_000
    folder = write_drop(
        inbox / args.name,
        args.format,
        n_annotated=args.size,
        seed=seed,
        ready=not args.no_ready,
    )
    print(f"{args.format} drop written to {folder}" + ("" if args.no_ready else " (READY)"))
    return 0


def task_table(storage_root, profile: str, tasks) -> list[str]:
    """The per-task lines `make demo` prints: threshold-free test AP and the operating point."""
    from .config import get_profile
    from .core import evaluation as core_eval
    from .records import EvaluationSummary
    from .storage import Storage

    st = Storage.for_profile(storage_root, profile)
    rows = [core_eval.TABLE_HEADER]
    for t in tasks:
        found = EvaluationSummary.find(st, t)
        if found is None:
            rows.append(f"  {t:22s} not evaluated")
            continue
        rows.append(
            core_eval.table_row(
                t,
                found.figures,
                found.rule.conf,
                found.rule.iou,
                found.init,
                found.rule.fallback,
            )
        )
    rows.append(
        f"  (CI: patient-level bootstrap; too few: under {get_profile(profile).min_test_boxes} test boxes per "
        "class; CPM: LUNA16's centre rule, comparable with published CPMs; CPM-IoU: the project's IoU 0.5 "
        "rule; macro: mean over classes, micro: pooled over boxes)"
    )
    return rows


def cmd_materialize(args) -> int:
    from .backfill import MaterializeRequest, ensure_dagster_home, materialize, summary_lines
    from .config import current, get_profile
    from .core.classes import TASK_NAMES
    from .storage import Storage

    run_config = None
    if args.config:
        import yaml

        run_config = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(run_config, dict):
            raise SystemExit(
                f"{args.config}: run config must be a mapping (ops:/resources:), got {type(run_config).__name__}"
            )
    ensure_dagster_home()
    settings = current()
    profile = get_profile(args.profile).name
    select = [s.strip() for s in args.select.split(",")] if args.select else None
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    try:
        outcome = materialize(MaterializeRequest(select, tasks, profile, run_config))
    except RuntimeError as e:
        # the daemon's iterations keep failing, or the code location does not load
        print(f"xray-assets materialize: {e}", file=sys.stderr)
        return 1
    print()
    print("\n".join(summary_lines(outcome)))
    print(f"materialised in {outcome.seconds:.0f}s (profile {profile})")
    print(
        "per-task test figures (threshold-free AP with patient-level bootstrap CI; operating point at the tuned conf):"
    )
    print("\n".join(task_table(settings.storage_dir, profile, tasks or TASK_NAMES)))
    st = Storage.for_profile(settings.storage_dir, profile)
    parts = layout.report("study")
    if st.exists(*parts):
        print(f"study report: {'/'.join((st.url, *parts)) if st.remote else st.local_path(*parts)}")
    print(
        "Dagster UI: make ui, then http://127.0.0.1:3000 (the Backfills page shows this one); "
        f"MLflow UI: http://127.0.0.1:5000 (store {settings.mlflow_tracking_uri})"
    )
    return 0 if outcome.ok else 1


def cmd_batch(args) -> int:
    """The next annotation batch of a task: its partition added, then materialised through the
    instance (one backfill, as `materialize`); prints what went where."""
    import dagster as dg

    from .backfill import MaterializeRequest, ensure_dagster_home, materialize, summary_lines
    from .config import get_profile
    from .core.classes import TASK_NAMES
    from .defs.annotation import BATCH_PARTITIONS, batch_key, next_batch_number

    if args.task not in TASK_NAMES:
        print(
            f"xray-assets batch: unknown task {args.task!r}; one of {', '.join(TASK_NAMES)}",
            file=sys.stderr,
        )
        return 2
    ensure_dagster_home()
    profile = get_profile(args.profile).name
    instance = dg.DagsterInstance.get()
    existing = instance.get_dynamic_partitions(BATCH_PARTITIONS.name)
    key = batch_key(args.task, next_batch_number(existing, args.task))
    instance.add_dynamic_partitions(BATCH_PARTITIONS.name, [key])
    print(
        f"batch {key}: partition added; exporting {args.size} image(s) of {args.task}'s queue",
        flush=True,
    )
    given = {
        "size": args.size,
        "test_share": args.test_share,
        "min_score": args.min_score,
        "max_per_image": args.max_per_image,
    }
    config = {
        "ops": {"annotation_batches": {"config": {k: v for k, v in given.items() if v is not None}}}
    }
    request = MaterializeRequest(["annotation_batches"], None, profile, config, [key])
    outcome = materialize(request, instance=instance)
    print("\n".join(summary_lines(outcome)))
    event = instance.get_latest_materialization_event(dg.AssetKey("annotation_batches"))
    if outcome.ok and event is not None and event.asset_materialization.partition == key:
        md = event.asset_materialization.metadata
        print(
            f"batch {key}: {md['images'].value} image(s), {md['pre_annotations'].value} pre-annotation(s)"
        )
        print(f"  Label Studio: {md['label_studio'].value}")
        print(f"  COCO: {md['coco'].value}\n  CVAT: {md['cvat'].value}")
    return 0 if outcome.ok else 1


def cmd_reexecute(args) -> int:
    from .backfill import ensure_dagster_home, reexecute

    ensure_dagster_home()
    run = reexecute(args.run_id)
    print(f"re-execution {run.run_id} of {args.run_id}: {run.status.value}")
    return 0 if run.status.value == "SUCCESS" else 1


def cmd_serve(args) -> int:
    from .serve.app import serve

    serve(host=args.host, port=args.port, backend=args.backend)
    return 0


def cmd_annotate(args) -> int:
    """Label Studio on 127.0.0.1, offline, its database and `service.json` under
    `<storage>/label-studio/`, local files from the storage root (`label_studio.launch`); prints
    where it answers, its admin and where the password and token are (never the secrets)."""
    import subprocess

    from .config import current

    settings = current()
    if "://" in str(settings.storage_dir):
        print(
            "xray-assets annotate: Label Studio serves batch images from a local storage root; "
            f"XRAY_STORAGE_DIR is {settings.storage_dir}",
            file=sys.stderr,
        )
        return 2
    venv = Path(args.venv).resolve()
    if not (venv / "bin" / "label-studio").exists():
        print(
            f"xray-assets annotate: no Label Studio in {venv} (make annotate installs it)",
            file=sys.stderr,
        )
        return 2
    cmd, env, service = label_studio.launch(venv, settings.storage_dir, args.port)
    print(
        f"Label Studio: {service.url}\n"
        f"  log in as {service.user}; password and API token in {service.origin}\n"
        f"  images served from {settings.storage_dir}; the pipeline (make ui) finds it through "
        f"{label_studio.service_file(settings.storage_dir)}\n"
        "  the first start migrates its database (a few minutes), later starts take seconds",
        flush=True,
    )
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xray-assets", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    _data_commands(sub)
    _graph_commands(sub)
    _service_commands(sub)
    args = p.parse_args(argv)
    return args.fn(args)


def _data_commands(sub) -> None:
    """sample-data, sample-drop."""
    s = sub.add_parser("sample-data", help="write NIH- and VinBigData-format sample data")
    s.add_argument("out_dir")
    s.add_argument(
        "--size", type=int, default=160, help="annotated images per dataset (default 160)"
    )
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_sample_data)
    d = sub.add_parser(
        "sample-drop", help="write a sample annotation drop (new patients) into the inbox"
    )
    d.add_argument("name", help="the drop's folder name")
    d.add_argument("--format", choices=["nih", "vinbigdata"], default="nih")
    d.add_argument("--size", type=int, default=6, help="annotated images in the drop")
    d.add_argument(
        "--seed", type=int, default=None, help="default: from the name (each name its own patients)"
    )
    d.add_argument(
        "--inbox", default=None, help="default: $XRAY_INBOX_DIR or <XRAY_DATA_DIR>/inbox"
    )
    d.add_argument("--no-ready", action="store_true", help="leave out the READY marker")
    d.set_defaults(fn=cmd_sample_drop)


def _graph_commands(sub) -> None:
    """materialize, batch, reexecute: runs through the Dagster instance."""
    m = sub.add_parser(
        "materialize", help="materialise the graph: one asset backfill through the Dagster instance"
    )
    m.add_argument(
        "--profile", default=None, help="study, demo or smoke (default: $XRAY_PROFILE or demo)"
    )
    m.add_argument("--select", default=None, help="comma-separated asset keys (default: all)")
    m.add_argument(
        "--tasks", default=None, help="comma-separated task partitions (default: all six)"
    )
    m.add_argument(
        "--config",
        default=None,
        help="a YAML run config merged into every run's, as in the launchpad "
        "(e.g. ops: {trained_models: {config: {epochs: 5}}})",
    )
    m.set_defaults(fn=cmd_materialize)
    b = sub.add_parser(
        "batch",
        help="export the next annotation batch of a task (to Label Studio when `make annotate` runs)",
    )
    b.add_argument("task", help="the task whose queue it draws from, e.g. nih_multi")
    b.add_argument("--size", type=int, default=20, help="images in the batch (default 20)")
    b.add_argument(
        "--test-share", type=float, default=None, help="share drawn at random from test patients"
    )
    b.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="pre-annotations from this confidence (default: the task's tuned rule's)",
    )
    b.add_argument(
        "--max-per-image",
        type=int,
        default=None,
        help="at most this many pre-annotations per image",
    )
    b.add_argument("--profile", default=None, help="default: $XRAY_PROFILE or demo")
    b.set_defaults(fn=cmd_batch)
    r = sub.add_parser(
        "reexecute", help="re-execute a failed run from its failure (as the UI's button does)"
    )
    r.add_argument("run_id")
    r.set_defaults(fn=cmd_reexecute)


def _service_commands(sub) -> None:
    """serve, annotate: the web app and Label Studio."""
    v = sub.add_parser("serve", help="the web app: four served models side by side on an upload")
    v.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument(
        "--backend",
        choices=["openvino", "onnx", "pytorch"],
        default="openvino",
        help="openvino (default) or onnx: an export cached per model version; pytorch: the .pt weights",
    )
    v.set_defaults(fn=cmd_serve)
    a = sub.add_parser("annotate", help="Label Studio for the annotation loop (offline, 127.0.0.1)")
    a.add_argument("--port", type=int, default=label_studio.DEFAULT_PORT)
    a.add_argument("--venv", default=".venv-label-studio", help="Label Studio's own environment")
    a.set_defaults(fn=cmd_annotate)


if __name__ == "__main__":
    sys.exit(main())
