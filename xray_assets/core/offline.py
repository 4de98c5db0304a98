"""Nothing reaches the network at run time: ultralytics' settings, its fonts and its AMP check.

ultralytics reads its environment when it is first imported (`YOLO_OFFLINE`, `YOLO_AUTOINSTALL`,
`YOLO_CONFIG_DIR`), so `apply_env()` runs when `xray_assets` itself is imported: every entry point
(the CLI, the Dagster code location, the web app, the tests) imports the package before anything
imports ultralytics. `prepare()` then does what needs ultralytics loaded, before any training,
validation or prediction:

- the fonts it draws with (`Arial.ttf`, `Arial.Unicode.ttf`) are copies of matplotlib's DejaVu Sans
  in `$YOLO_CONFIG_DIR/Ultralytics/`, where `check_font` looks; a missing font is otherwise fetched
  from GitHub (a DNS look-up and a request even when `YOLO_OFFLINE` is set);
- on CUDA, ultralytics' `check_amp` loads a checkpoint it downloads; ours decides locally
  (`XRAY_AMP=0|1` forces it, otherwise known-bad GPUs are refused and a half-precision convolution
  is compared with full precision on the device);
- its run folders go under the config dir instead of `./runs`;
- OpenVINO's model conversion (the web app's export) sends usage telemetry to Google Analytics from a
  child process unless a consent file in the user's home says no: in our processes it is declined
  and its sender does nothing (found by the tests' recording network guard).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from . import atomic

#: Forced, not defaults: the project promises no network use, whatever the shell says.
#: ("true"/"false" rather than 1/0: older 8.4 releases read only these spellings.) MLflow 3 sends
#: usage telemetry unless told not to (found by the tests' recording network guard).
FORCED_ENV = {
    "YOLO_OFFLINE": "true",
    "YOLO_AUTOINSTALL": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
#: GPUs on which ultralytics itself disables AMP (NaN losses)
_BAD_AMP_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
    re.IGNORECASE,
)


def cache_dir() -> Path:
    """The user's cache for xray-assets, the one root every cache path derives from: ultralytics'
    config dir, pretrained weights, an object-store root's mirror and its local MLflow store."""
    return Path.home() / ".cache" / "xray-assets"


def apply_env() -> None:
    """Offline settings in the environment. Cheap (no files); safe to call any number of times."""
    os.environ.update(FORCED_ENV)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    telemetry = sys.modules.get("mlflow.telemetry.client")
    if telemetry is not None and telemetry.get_telemetry_client() is not None:
        telemetry.set_telemetry_client()  # mlflow was imported first: its client now sees the setting


def ultralytics_imported_early() -> bool:
    """True when ultralytics was imported before `apply_env` (its constants then ignore ours)."""
    mod = sys.modules.get("ultralytics.utils")
    return (
        mod is not None
        and getattr(mod, "USER_CONFIG_DIR", None) is not None
        and not str(mod.USER_CONFIG_DIR).startswith(
            str(Path(os.environ["YOLO_CONFIG_DIR"]).expanduser())
        )
    )


def font_dir() -> Path:
    """Where ultralytics' `check_font` looks (its USER_CONFIG_DIR)."""
    return Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"


def place_fonts(target: Path | None = None) -> list[Path]:
    """Copy matplotlib's DejaVu Sans under ultralytics' font names; returns the font files."""
    import matplotlib

    target = target or font_dir()
    target.mkdir(parents=True, exist_ok=True)
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    out = []
    for name in FONTS:
        dst = target / name
        if not dst.exists():
            atomic.copy_file(dejavu, dst)
        out.append(dst)
    return out


def local_amp_check(model) -> bool:
    """ultralytics' AMP check without its download: is float16 autocast sound on this device?"""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False  # AMP only acts on CUDA in ultralytics
    forced = os.environ.get("XRAY_AMP", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if _BAD_AMP_GPUS.search(torch.cuda.get_device_name(device)):
        return False
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(2, 16, 64, 64, device=device, generator=gen)
    w = torch.randn(32, 16, 3, 3, device=device, generator=gen) * 0.1
    full = torch.nn.functional.conv2d(x, w, padding=1)
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        half = torch.nn.functional.conv2d(x, w, padding=1)
    return bool(
        torch.isfinite(half).all() and torch.allclose(full, half.float(), atol=5e-2, rtol=5e-2)
    )


def prepare() -> None:
    """Call before ultralytics trains, validates or predicts (imports it)."""
    apply_env()
    if ultralytics_imported_early():
        # its constants were fixed before ours: put the fonts where it now looks, and say so
        import ultralytics.utils as uu

        place_fonts(Path(uu.USER_CONFIG_DIR))
        print(
            f"xray-assets: ultralytics was imported before xray_assets; fonts placed in {uu.USER_CONFIG_DIR}",
            file=sys.stderr,
        )
    else:
        place_fonts()
    from ultralytics.utils import SETTINGS

    from . import compat

    compat.decline_openvino_telemetry()
    compat.use_local_amp_check(local_amp_check)
    runs = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "runs"
    wanted = {"sync": False, "runs_dir": str(runs)}
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
