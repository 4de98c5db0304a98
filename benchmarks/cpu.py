"""What the CPU can do, printed beside every inference figure: its instruction sets (AVX2, AVX-512,
VNNI, AMX), the cores this process may use, and the nominal peak of the precision a path runs in.

The peak is nominal: cores x clock (as /proc/cpuinfo reports it) x operations per cycle per core for
that precision's widest instructions (two FMA ports; AMX's tile unit), no turbo, no memory limit.
Achieved GFLOP/s divided by it says how far a path is from the arithmetic, not what is attainable.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

#: operations (multiply and add counted apart) per cycle per core, by the instructions that do them
OPS_PER_CYCLE = {
    ("f32", "avx2"): 32,  # 2 FMA ports x 8 lanes x 2
    ("f32", "avx512"): 64,  # 2 x 16 x 2
    ("bf16", "avx512_bf16"): 128,  # vdpbf16ps: 2 x 32 pairs x 2
    ("bf16", "amx"): 2048,  # AMX-BF16: 1024 multiply-adds per cycle
    ("int8", "avx2"): 64,  # vpmaddubsw + vpmaddwd, 2 ports x 16 x 2
    ("int8", "avx_vnni"): 128,  # 256-bit vpdpbusd, 2 ports x 32 x 2
    ("int8", "avx512_vnni"): 256,  # 512-bit vpdpbusd, 2 ports x 64 x 2
    ("int8", "amx"): 4096,  # AMX-INT8: 2048 multiply-adds per cycle
}


#: the flags oneDNN may use when ONEDNN_MAX_CPU_ISA holds it at AVX2 (what an AVX2-only CPU has)
AVX2_ONLY = {"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"}


def cpu_flags() -> set[str]:
    """The CPU's own flags (/proc/cpuinfo), as the serving check reads them."""
    from xray_assets.serve.runtime import cpu_flags as read

    return set(read())


def capped() -> bool:
    """oneDNN (OpenVINO's CPU kernels, PyTorch's convolutions) held at AVX2 by ONEDNN_MAX_CPU_ISA."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"


def flags() -> set[str]:
    """The flags the inference kernels may use: the CPU's, or AVX2's where oneDNN is capped."""
    return cpu_flags() & AVX2_ONLY if capped() else cpu_flags()


@cache
def ghz() -> float | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)
    return float(m.group(1)) / 1000 if m else None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def isa() -> str:
    """The instruction sets that matter for inference, as one line (e.g. `AVX2 AVX-512 VNNI AMX`)."""
    f = flags()
    names = [
        ("AVX2", "avx2" in f),
        ("AVX-512", "avx512f" in f),
        ("AVX512-BF16", "avx512_bf16" in f),
        ("VNNI", "avx512_vnni" in f or "avx_vnni" in f),
        ("AMX", "amx_tile" in f),
    ]
    out = " ".join(n for n, present in names if present) or "none of AVX2/AVX-512/VNNI/AMX"
    return (
        f"{out} (emulated: ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)" if capped() else out
    )


def best_unit(precision: str) -> str | None:
    """The widest unit this CPU has for `precision` (bf16, f32, int8)."""
    f = flags()
    order = {
        "int8": [
            ("amx", "amx_int8"),
            ("avx512_vnni", "avx512_vnni"),
            ("avx_vnni", "avx_vnni"),
            ("avx2", "avx2"),
        ],
        "bf16": [("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16")],
        "f32": [("avx512", "avx512f"), ("avx2", "avx2")],
    }.get(precision, [])
    for unit, flag in order:
        if flag in f:
            return unit
    return None


def peak_gflops(precision: str) -> tuple[float | None, str]:
    """(nominal peak GFLOP/s of this process's cores in `precision`, how it was counted)."""
    unit, clock = best_unit(precision), ghz()
    if unit is None or clock is None:
        return None, f"{precision}: no peak known for this CPU"
    ops = OPS_PER_CYCLE[(precision, unit)]
    return (
        cores() * clock * ops,
        f"{cores()} cores x {clock:.2f} GHz x {ops} {precision} ops/cycle ({unit})",
    )


def describe(precision: str, gflop: float, seconds: float) -> str:
    """`achieved GFLOP/s of peak` for `gflop` of work done in `seconds` at `precision`."""
    achieved = gflop / seconds if seconds > 0 else float("nan")
    peak, how = peak_gflops(precision)
    share = f" = {100 * achieved / peak:.1f}% of the nominal {peak:,.0f} ({how})" if peak else ""
    return f"{achieved:,.0f} GFLOP/s {precision}{share}"


def avx2_rows(script: str, env: dict[str, str]) -> list[dict]:
    """`script`'s measurement again in a child process whose kernels are held at AVX2 (oneDNN, which
    OpenVINO's CPU plugin and PyTorch's convolutions use, and ATen's own vector code): what an
    AVX2-only CPU runs, measured on this one. Its rows come back named `[AVX2]`; none where this
    CPU has nothing beyond AVX2 (the plain run measured it) or this is already the child."""
    import json
    import subprocess
    import sys

    beyond = any(f.startswith(("avx512", "amx", "avx_vnni")) for f in cpu_flags())
    if capped() or not beyond:
        return []
    child = {
        **os.environ,
        **env,
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    }
    out = subprocess.run(
        [sys.executable, script, "--json"],
        env=child,
        cwd=Path(script).parent,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{Path(script).name} at AVX2 failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return [{**r, "benchmark": f"{r['benchmark']} [AVX2]"} for r in rows]


def print_rows(rows: list[dict]) -> None:
    """A benchmark run as a script: its rows, one JSON line with --json (the AVX2 child's answer)."""
    import json
    import sys

    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r)
