"""The science: pure functions with no Dagster import, unit-tested on their own."""
