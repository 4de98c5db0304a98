"""The Dagster shell: thin assets, checks and automation; the science lives in `core`."""
