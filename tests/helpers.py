"""Test helpers: the graph materialised in this process, stage by stage, in one Dagster instance.

Fast (no code server, no run subprocesses): for tests whose subject is what the assets do. What
`xray-assets materialize` does (one backfill through the instance's launcher) is tested on its own in
test_graph.py.
"""

import dagster as dg


def _stages() -> list[tuple[str, list[str], str | None]]:
    """The graph in runs (a Dagster run covers assets of one partitions definition), from the graph
    itself (`graph_order.study_stages`): (name, asset keys, None | "shards" | "tasks")."""
    from xray_assets.definitions import defs
    from xray_assets.defs.resources import SHARD_PARTITIONS, TASK_PARTITIONS
    from xray_assets.graph_order import study_stages

    kinds = {id(SHARD_PARTITIONS): "shards", id(TASK_PARTITIONS): "tasks"}
    out = []
    for keys, pdef in study_stages(defs.resolve_asset_graph()):
        kind = None if pdef is None else kinds[id(pdef)]
        out.append((kind or "unpartitioned", keys, kind))
    return out


STAGES = _stages()
TASKS = [
    "nih_multi",
    "nih_binary",
    "united_multi",
    "united_binary",
    "united_cardiomegaly",
    "united_mass_nodule",
]


def graph(xray):
    from xray_assets.definitions import build_definitions

    defs = build_definitions(xray)
    return defs, [*defs.assets, *defs.asset_checks]


def materialize_stages(xray, instance, select=None, tasks=None, raise_on_error=True) -> list:
    """Every stage (or the assets in `select`), every partition (task partitions: `tasks` if given)."""
    from xray_assets.defs.resources import SHARD_PARTITIONS

    _, everything = graph(xray)
    results = []
    for _, keys, parts in STAGES:
        keys = [k for k in keys if not select or k in select]
        if not keys:
            continue
        if parts == "shards":
            partition_keys = SHARD_PARTITIONS.get_partition_keys()
        elif parts == "tasks":
            partition_keys = tasks or TASKS
        else:
            partition_keys = [None]
        for pk in partition_keys:
            results.append(
                dg.materialize(
                    everything,
                    selection=keys,
                    partition_key=pk,
                    instance=instance,
                    resources={"xray": xray},
                    raise_on_error=raise_on_error,
                )
            )
    return results


def materialized(results) -> set[str]:
    return {
        e.asset_key.to_user_string() for r in results for e in r.get_asset_materialization_events()
    }


def coco_ap50(gt, pred, labels, area_range=(0, 1e10)) -> dict[str, float]:
    """pycocotools' AP at IoU 0.5 per label (area "all" unless `area_range` says otherwise, 100
    detections per image): the reference the project's metrics are checked against."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = {k: n for n, k in enumerate(sorted(set(gt.image_id) | set(pred.image_id)))}
    cats = {c: i + 1 for i, c in enumerate(labels)}
    coco = COCO()
    coco.dataset = {
        "images": [{"id": n, "width": 300, "height": 300} for n in images.values()],
        "categories": [{"id": v, "name": k} for k, v in cats.items()],
        "annotations": [
            {
                "id": n + 1,
                "image_id": images[r.image_id],
                "category_id": cats[r.label],
                "bbox": [r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min],
                "area": (r.x_max - r.x_min) * (r.y_max - r.y_min),
                "iscrowd": 0,
            }
            for n, r in enumerate(gt.itertuples())
        ],
    }
    coco.createIndex()
    dets = coco.loadRes(
        [
            {
                "image_id": images[r.image_id],
                "category_id": cats[r.label],
                "bbox": [r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min],
                "score": r.score,
            }
            for r in pred.itertuples()
        ]
    )
    ev = COCOeval(coco, dets, "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng, ev.params.areaRngLbl = [list(area_range)], ["range"]
    ev.params.maxDets = [100]
    ev.evaluate()
    ev.accumulate()
    out = {}
    for name, cid in cats.items():
        p = ev.eval["precision"][0, :, cid - 1, 0, 0]
        out[name] = float(np.mean(p[p > -1])) if (p > -1).any() else 0.0
    return out
