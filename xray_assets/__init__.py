"""xray-assets: a Dagster asset graph that reproduces a chest X-ray detection study end to end."""

from .core import offline as _offline

# before anything imports ultralytics, which reads these once at import
_offline.apply_env()
