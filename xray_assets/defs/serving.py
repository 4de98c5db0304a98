"""What the fast path serves, decided as an asset: per task, after the champion gate, the served
version's INT8 export calibrated on the task's val images and checked against its float weights on
test (`serve.quantize`). The verdict is tagged on the registry version and cached beside the export,
so the web app and the annotation queue start from it instead of quantising on their first use."""

import dagster as dg

from ..serve import quantize
from ..serve.models import record_check, resolve
from .automation import code_version, content_version, on_new_data
from .datasets import yolo_datasets
from .evaluation import nms_thresholds
from .gate import champion_gate
from .resources import TASK_PARTITIONS, XrayResource
from .training import trained_models

OWNERS = ["team:ml"]


@dg.asset(
    group_name="reports",
    partitions_def=TASK_PARTITIONS,
    kinds={"openvino", "mlflow"},
    owners=OWNERS,
    tags={"stage": "serve"},
    deps=[champion_gate, trained_models, nms_thresholds, yolo_datasets],
    automation_condition=on_new_data(only=["champion_gate"]),
    code_version=code_version(quantize, libraries=("openvino", "nncf")),
    # OpenVINO on the CPU: no GPU asked for (the check's float pass runs where torch finds a device)
    description="The served version's INT8 OpenVINO model (NNCF, calibrated on the task's val images) "
    "and its accuracy check: threshold-free test AP50 against the float weights through the task's "
    "detection rule. INT8 serves (web app, annotation queue) only where it loses at most "
    "XRAY_INT8_MAX_DROP (default 0.01); the verdict is tagged on the registry version.",
)
def served_int8(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    settings = xray.settings
    m = resolve(settings, context.partition_key).load(context.log.info)
    record_check(settings, m)
    c = m.check
    context.log.info(f"{m.task}: v{m.version} serves openvino {m.precision}: {c.reason}")
    return dg.MaterializeResult(
        metadata={
            "version": m.version,
            "chosen": m.chosen,
            "serves": f"openvino {m.precision}",
            "int8_check": c.verdict,
            "reason": c.reason,
            "float_test_map50": c.float_test_map50,
            "int8_test_map50": c.int8_test_map50,
            "ap50_change": c.change,
            "max_drop": c.max_drop,
            "test_images": c.test_images,
            "calibration_images": c.calibration_images,
            "check_seconds": c.seconds,
        },
        data_version=content_version(m.version, c.verdict, c.weights_sha256),
    )


defs = dg.Definitions(assets=[served_int8])
