# The user-code image: the asset graph, served to Dagster over gRPC (dagster-user-deployments in the
# official Helm chart) and run by K8sRunLauncher / k8s_job_executor in pods of this same image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/opt/xray/.ultralytics \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    XRAY_CACHE_DIR=/var/cache/xray-assets/mirror
# (XRAY_CACHE_DIR: the local mirror of an s3:// storage root, the same path in every pod of this image)

# OpenCV's runtime libraries; nothing is downloaded at run time
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xray
COPY pyproject.toml README.md LICENSE ./
COPY xray_assets ./xray_assets
COPY workspace.yaml ./
# torch from PyPI is the CUDA build: the GPU steps use it, the CPU steps ignore it
RUN pip install . && mkdir -p "$DAGSTER_HOME" "$YOLO_CONFIG_DIR" \
    && python -c "from xray_assets.config import configure_ultralytics; configure_ultralytics()"

# the Helm chart mounts the instance (dagster.yaml from Postgres settings) into $DAGSTER_HOME
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "xray_assets.definitions", "-h", "0.0.0.0", "-p", "3030"]
