"""What the fast path serves, decided as an asset: per task, after the champion gate, the served
version's INT8 export calibrated on the task's val images, then its float export, each checked
against its float weights on test in both directions (`serve.quantize`). The verdict is tagged on
the registry version and cached beside the export, so the web app and the annotation queue start
from it instead of quantising on their first use."""

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
    description="Which fast path serves the champion: INT8 or the float export, by the serving check.",
)
def served_int8(context: dg.AssetExecutionContext, xray: XrayResource) -> dg.MaterializeResult:
    """Which fast path serves the champion: INT8 or the float export only where its test AP50 and
    operating point stay within tolerance of the float weights', either way."""
    settings = xray.settings
    m = resolve(settings, context.partition_key).load(context.log.info)
    record_check(settings, m)
    c = m.check
    context.log.info(f"{m.task}: v{m.version} serves {c.serves} ({m.precision}): {c.reason}")
    int8 = c.path(quantize.INT8)
    return dg.MaterializeResult(
        metadata={
            "version": m.version,
            "chosen": m.chosen,
            "serves": f"{c.serves} ({m.precision})",
            "queue_ranks_on": c.queue,
            "int8_check": c.verdict,
            "int8_moved": c.moved() or "nothing",
            "reason": c.reason,
            "float_test_map50": c.float_test_map50,
            "float_precision": c.float_precision,
            "float_recall": c.float_recall,
            "int8_test_map50": c.int8_test_map50,
            "int8_precision": int8.precision if int8 else None,
            "int8_recall": int8.recall if int8 else None,
            "int8_rank_correlation": int8.rank_correlation if int8 else None,
            "ap50_change": c.change,
            "ap50_tolerance": c.tolerance["ap50"],
            "operating_point_tolerance": c.tolerance["operating_point"],
            "paths": dg.MetadataValue.md(
                "\n".join(
                    f"- {p.describe()}, rank correlation {p.rank_correlation}" for p in c.paths
                )
                or "none checked"
            ),
            "cpu": c.cpu,
            "test_images": c.test_images,
            "calibration_images": c.calibration_images,
            "check_seconds": c.seconds,
        },
        data_version=content_version(m.version, c.verdict, c.serves, c.queue, c.weights_sha256),
    )


defs = dg.Definitions(assets=[served_int8])
