"""Run in a fresh interpreter against a copy of the package (PYTHONPATH) and a shared DAGSTER_HOME:
`seed` records a materialisation of every asset and partition (as a finished study would have) and
evaluates the automation conditions until they settle; `check` evaluates them once more, from the
saved cursor, with this copy's definitions, and prints what Dagster's automation would request."""

import json
import sys

import dagster as dg


def main(mode: str, cursor_file: str) -> None:
    from xray_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    if mode == "seed":
        for key in sorted(graph.materializable_asset_keys):
            node = graph.get(key)
            pdef = node.partitions_def
            if isinstance(pdef, dg.DynamicPartitionsDefinition):
                continue
            for pk in pdef.get_partition_keys() if pdef else [None]:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        key,
                        partition=pk,
                        tags={
                            "dagster/data_version": f"{key.to_user_string()}-{pk}",
                            "dagster/code_version": node.code_version or "",
                        },
                    )
                )
        for check in sorted(
            graph.asset_check_keys, key=str
        ):  # every check passed, blocking ones included
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=check.asset_key, check_name=check.name, passed=True
                )
            )
        cursor, requested = None, None
        for _ in range(3):
            res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor, requested = res.cursor, res.total_requested
        assert requested == 0, f"a settled study still requests {requested}"
    else:
        with open(cursor_file) as fh:
            cursor = dg.deserialize_value(fh.read())
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        requested = {}
        for r in res.results:  # (the public count: a dynamic partition set needs its store)
            n = res.get_num_requested(r.key)
            if n:
                requested[r.key.to_user_string()] = n
        print(json.dumps(requested))
        return
    with open(cursor_file, "w") as fh:
        fh.write(dg.serialize_value(cursor))
    print(json.dumps({}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
