"""The inference web app (FastAPI) that shows the four served models side by side.

Not built yet: issue 8 brings `xray-assets serve`. It will read models and thresholds written by
the graph (`storage/models/<task>`, `storage/tuning/<task>/best.json`) through `core`, `config` and
`storage` only, never through Dagster.
"""
