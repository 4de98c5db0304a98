"""The inference web app (FastAPI): the study's four served models side by side.

`models.py` resolves each served task's champion (MLflow alias, else the latest version, else the
graph's latest weights), its tuned thresholds, and a cached OpenVINO (or ONNX) export; `decode.py` turns an
upload (PNG, JPEG or DICOM) into pixels; `app.py` is the FastAPI app. It reads `core`, `config` and
`storage` only, never Dagster.
"""
