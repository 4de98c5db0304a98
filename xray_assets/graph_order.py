"""The study's assets in the order the graph itself gives (Dagster's topological order of the
definitions), never listed by hand: what `xray-assets materialize` selects by default, and the runs
the tests and benchmarks make stage by stage."""

from __future__ import annotations

#: what a person or a sensor makes, not the study: accepted drops (the inbox sensor) and exported
#: annotation batches (a person adds a partition)
NOT_THE_STUDY = frozenset({"annotation_drops", "annotation_batches"})


def _names(keys) -> list[str]:
    return [k.to_user_string() for k in keys]


def upstream(asset_graph, key: str) -> set[str]:
    """`key` and every asset it depends on, directly or not."""
    import dagster as dg

    seen, todo = set(), [dg.AssetKey.from_user_string(key)]
    while todo:
        k = todo.pop()
        if k.to_user_string() in seen:
            continue
        seen.add(k.to_user_string())
        todo.extend(asset_graph.get(k).parent_keys)
    return seen


def study_assets(asset_graph, up_to: str | None = None) -> list[str]:
    """The study's assets in topological order (only `up_to` and what it depends on, if given)."""
    wanted = upstream(asset_graph, up_to) if up_to else None
    return [
        k
        for k in _names(asset_graph.toposorted_asset_keys)
        if k not in NOT_THE_STUDY and (wanted is None or k in wanted)
    ]


def study_stages(asset_graph) -> list[tuple[list[str], object]]:
    """The study as runs a process can make one after another: (asset keys, their partitions
    definition), level by level of the graph. A run holds assets of one partitions definition, so a
    level splits by definition; a group joins the previous run when it has the same definition (its
    dependencies are all in earlier levels, so in that run or before it)."""
    stages: list[tuple[list[str], object]] = []
    for level in asset_graph.toposorted_asset_keys_by_level:
        groups: dict = {}
        for key in sorted(_names(level)):
            if key in NOT_THE_STUDY:
                continue
            pdef = asset_graph.get(_key(key)).partitions_def
            groups.setdefault(_pdef_id(pdef), (pdef, []))[1].append(key)
        last = _pdef_id(stages[-1][1]) if stages else None
        for pid, (pdef, keys) in sorted(groups.items(), key=lambda g: g[0] != last):
            if stages and _pdef_id(stages[-1][1]) == pid:
                stages[-1][0].extend(keys)
            else:
                stages.append((keys, pdef))
    return stages


def _key(name: str):
    import dagster as dg

    return dg.AssetKey.from_user_string(name)


def _pdef_id(pdef) -> str:
    """A partitions definition compared by what it is (its kind and keys or name)."""
    if pdef is None:
        return "none"
    name = getattr(pdef, "name", None)
    if name:
        return f"dynamic:{name}"
    return f"{type(pdef).__name__}:{','.join(pdef.get_partition_keys())}"
