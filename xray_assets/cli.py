"""`xray-assets`: sample data, materialising the study, serving the models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import layout


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
    from .config import current
    from .core.synthetic import write_drop

    inbox = Path(args.inbox) if args.inbox else current().inbox_dir
    folder = write_drop(
        inbox / args.name,
        args.format,
        n_annotated=args.size,
        seed=args.seed,
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
    from .backfill import ensure_dagster_home, materialize, summary_lines
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
        outcome = materialize(select, tasks, profile, run_config=run_config)
    except (
        RuntimeError
    ) as e:  # the daemon's iterations keep failing, or the code location does not load
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
    """Label Studio on 127.0.0.1, offline, its data under .label-studio/, local files from the
    storage root; the admin and the API token from the environment (never printed)."""
    import os
    import subprocess

    from . import label_studio
    from .config import current

    settings = current()
    need = ("XRAY_LABEL_STUDIO_USER", "XRAY_LABEL_STUDIO_PASSWORD", "XRAY_LABEL_STUDIO_TOKEN")
    missing = [v for v in need if not os.environ.get(v)]
    if missing:
        print(
            f"xray-assets annotate: set {', '.join(missing)} (the admin's e-mail and password and "
            "an API token of 40 hex digits; keep them out of the repository)",
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
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **label_studio.service_env(
            data, settings.storage_dir, os.environ["XRAY_LABEL_STUDIO_TOKEN"]
        ),
    }
    cmd = label_studio.start_command(
        venv,
        data,
        args.port,
        os.environ["XRAY_LABEL_STUDIO_USER"],
        os.environ["XRAY_LABEL_STUDIO_PASSWORD"],
        os.environ["XRAY_LABEL_STUDIO_TOKEN"],
    )
    print(
        f"Label Studio on http://127.0.0.1:{args.port} (data {data}, images from "
        f"{settings.storage_dir}); set XRAY_LABEL_STUDIO_URL=http://127.0.0.1:{args.port} for the "
        "pipeline. The first start migrates its database (about 2 minutes).",
        flush=True,
    )
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xray-assets", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
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
    d.add_argument("--seed", type=int, default=101)
    d.add_argument(
        "--inbox", default=None, help="default: $XRAY_INBOX_DIR or <XRAY_DATA_DIR>/inbox"
    )
    d.add_argument("--no-ready", action="store_true", help="leave out the READY marker")
    d.set_defaults(fn=cmd_sample_drop)
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
    r = sub.add_parser(
        "reexecute", help="re-execute a failed run from its failure (as the UI's button does)"
    )
    r.add_argument("run_id")
    r.set_defaults(fn=cmd_reexecute)
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
    a.add_argument("--port", type=int, default=8090)
    a.add_argument("--venv", default=".venv-label-studio", help="Label Studio's own environment")
    a.add_argument("--data-dir", default=".label-studio", help="its database and uploads")
    a.set_defaults(fn=cmd_annotate)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
