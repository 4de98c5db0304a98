"""`make bench`: every benchmark, printed as one ratio table (baselines measured in the same run)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BENCHMARKS = [
    "bench_consensus",
    "bench_dicom",
    "bench_training",
    "bench_tuning",
    "bench_serve",
    "bench_queue",
    "bench_object_store",
    "bench_sensor",
    "bench_graph",  # the real tables at 1/8, 1/2 and full size: about half an hour on 2 cores
    "bench_active_learning",  # the slowest (about an hour on 2 cores): last
]


def main() -> int:
    rows = []
    # XRAY_BENCH_ONLY=bench_serve,bench_queue runs those alone (names as in BENCHMARKS)
    only = [n for n in os.environ.get("XRAY_BENCH_ONLY", "").split(",") if n]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
        return 2
    for name in only or BENCHMARKS:
        try:
            rows += importlib.import_module(name).main()
        except Exception as exc:  # one failing benchmark must not hide the others
            rows.append({"benchmark": name, "error": f"{exc.__class__.__name__}: {exc}"})
    print(f"{'benchmark':28s} {'ours (s)':>10s} {'baseline (s)':>13s} {'ratio':>8s}  baseline")
    for r in rows:
        if "error" in r:
            print(f"{r['benchmark']:28s} ERROR {r['error']}")
            continue
        unit = f" [{r['unit']}]" if "unit" in r else ""  # seconds unless a row says otherwise
        print(
            f"{r['benchmark']:28s} {r['ours_s']:10.3f} {r['baseline_s']:13.3f} {r['speedup']:7.2f}x  {r['baseline']}{unit}"
        )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
