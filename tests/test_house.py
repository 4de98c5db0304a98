"""Rules of the house that a reader cannot see at a glance: `core/` imports no Dagster; Dagster's
private modules (`dagster._...`) are imported in one adapter only (`dagster_adapter.py`); the tests
import no private Dagster name that has a public one, and say why at each private import they keep."""

import ast

from conftest import ROOT

PACKAGE = ROOT / "xray_assets"
#: private names with a public equivalent (dg.RunsFilter, dg.DagsterEventType, dg.serialize_value,
#: the system tag strings in xray_assets.backfill, time.time)
HAVE_PUBLIC = {
    "RunsFilter",
    "DagsterEventType",
    "serialize_value",
    "deserialize_value",
    "BACKFILL_ID_TAG",
    "PARTITION_NAME_TAG",
    "get_current_timestamp",
}


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _private_imports(path):
    """(line, imported names, the source line) of each import from a private Dagster module."""
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
            yield node.lineno, {a.name for a in node.names}, lines[node.lineno - 1]
        elif isinstance(node, ast.Import) and any(
            a.name.startswith("dagster._") for a in node.names
        ):
            yield node.lineno, {a.name for a in node.names}, lines[node.lineno - 1]


def test_core_imports_no_dagster_and_private_dagster_lives_in_one_adapter():
    private, core = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mods = _imports(path)
        rel = str(path.relative_to(PACKAGE))
        if any(m.startswith("dagster._") for m in mods):
            private[rel] = sorted(m for m in mods if m.startswith("dagster._"))
        if rel.startswith("core/") and any(m == "dagster" or m.startswith("dagster") for m in mods):
            core[rel] = sorted(m for m in mods if m.startswith("dagster"))
    assert not core, f"core/ is pure Python: {core}"
    assert set(private) == {"dagster_adapter.py"}, (
        f"private Dagster imports outside the adapter: {private}"
    )


def test_tests_use_public_dagster_names_and_say_why_at_each_private_one():
    offenders, silent = [], []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "test_dagster_contract.py":  # the contract compares with the private names
            continue
        for line, names, text in _private_imports(path):
            if names & HAVE_PUBLIC:
                offenders.append(f"{path.name}:{line} {sorted(names & HAVE_PUBLIC)}")
            if "# private:" not in text:
                silent.append(f"{path.name}:{line}")
    assert not offenders, f"private imports of names with a public equivalent: {offenders}"
    assert not silent, f"private imports without a '# private: why' comment: {silent}"


def test_each_artefact_file_name_is_spelled_in_one_module():
    """The storage layout has one author (`layout.py`, or the one asset that writes a file for people):
    a file name spelled in two modules is a contract kept by hand."""
    import re

    where: dict[str, set[str]] = {}
    pattern = re.compile(r"[\"']([A-Za-z0-9_]+\.(?:parquet|json|md|html|png|pt|txt|yaml))[\"']")
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in pattern.findall(path.read_text()):
            where.setdefault(name, set()).add(str(path.relative_to(PACKAGE)))
    twice = {n: sorted(m) for n, m in where.items() if len(m) > 1}
    assert not twice, f"file names spelled in more than one module: {twice}"
    assert {"model.json", "boxes.parquet", "champion.json"} <= set(where), (
        "the scan sees the layout"
    )


def test_the_records_assets_hand_each_other_are_read_and_written_in_one_module():
    """The model's record, the detection rule and the evaluation summary go through `records.py`:
    no other module opens their files (a second reader is a dict contract kept by hand).
    Catches: an asset reading model.json with `st.read_json(*layout.model_info(...))` again."""
    import re

    opened = re.compile(r"layout\.(model_info|rule|summary)\(")
    readers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("records.py", "layout.py") and opened.search(p.read_text())
    )
    assert not readers, f"modules opening a record's file themselves: {readers}"


def test_records_round_trip_and_read_what_an_older_release_wrote(tmp_path):
    """Catches: a record losing a field on its way through the file (NaN figures, the rule, the
    version as a string), or refusing a file with a key it does not know."""
    import math

    from xray_assets.core import layout
    from xray_assets.core.detection import DetectionRule
    from xray_assets.records import EvaluationSummary, ModelRecord, find_rule, write_rule
    from xray_assets.storage import Storage

    st = Storage(tmp_path)
    model = ModelRecord(task="nih_binary", model_version="3", imgsz=160, classes=("Finding",))
    model.write(st)
    assert ModelRecord.read(st, "nih_binary") == model
    st.write_json(
        {**model.as_dict(), "model_version": 4, "written_by": "0.1"}, *layout.model_info("x")
    )
    older = ModelRecord.read(st, "x")
    assert older.model_version == "4" and older.classes == ("Finding",)
    assert ModelRecord.find(st, "absent") is None and find_rule(st, "absent") is None
    rule = DetectionRule(conf=0.2, iou=0.5, agnostic=True)
    write_rule(st, "nih_binary", rule, {"objective": 0.5})
    assert find_rule(st, "nih_binary") == rule
    summary = EvaluationSummary("nih_binary", {"map50": 0.5, "cpm_iou": float("nan")}, rule, "3")
    summary.write(st)
    again = EvaluationSummary.read(st, "nih_binary")
    assert again.rule == rule and again.model_version == "3" and again.figures["map50"] == 0.5
    assert (
        math.isnan(again.figures["cpm_iou"])
        and st.read_json(*layout.summary("nih_binary"))["cpm_iou"] is None
    ), "NaN is null in the file, NaN again when read"


def test_nothing_in_the_repository_points_outside_it():
    """A clone has no design contract beside it, no issue tracker and no shared data folder: docs,
    code and tests say what they mean in their own words (the genuine public files are optional and
    found through XRAY_REAL_DATA). `.ci/run` and the Makefile may look for CI's folder."""
    import re

    outside = re.compile(r"\.\./shared|\bDESIGN(?:'s| \"|\.md)|\bissue \d+")
    found = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")] + [
        p for d in ("xray_assets", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")
    ]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if (
                outside.search(line)
                and "ultralytics issue" not in line
                and "test_house" not in path.name
            ):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


# -- the house's shape (issue 33): thin assets, core on the ground floor, one of each ---------------

ASSET_BODY_MAX, FUNCTION_MAX = 60, 80


def _module(path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _functions():
    """(module, function node, is an asset) for every function of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                asset = any(d.startswith(("dg.asset", "dg.multi_asset")) for d in decorators)
                yield _module(path), node, asset


def _package_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports resolved, at any depth)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name and t.startswith("xray_assets"):
                    found.add(t)
        out[name] = found
    return out


def test_assets_are_thin_and_functions_short():
    """Catches: an asset body over 60 lines (the work belongs in a named, tested function) or any
    function of the package over 80 lines."""
    long_assets, long_functions = [], []
    for module, node, asset in _functions():
        if asset:  # its code: from the first statement after the docstring
            first = node.body[1] if ast.get_docstring(node) and len(node.body) > 1 else node.body[0]
            body = node.end_lineno - first.lineno + 1
            if body > ASSET_BODY_MAX:
                long_assets.append(f"{module}.{node.name}: {body}")
        size = node.end_lineno - node.lineno + 1
        if size > FUNCTION_MAX:
            long_functions.append(f"{module}.{node.name}: {size}")
    assert not long_assets, f"asset bodies over {ASSET_BODY_MAX} lines: {long_assets}"
    assert not long_functions, f"functions over {FUNCTION_MAX} lines: {long_functions}"


def test_asset_descriptions_are_one_sentence():
    """Catches: an asset description of several sentences (Dagster's own projects use one; the
    rest belongs in the function's docstring, beside the code)."""
    import re

    from xray_assets.definitions import defs

    long = {
        spec.key.to_user_string(): spec.description
        for a in defs.assets
        for spec in a.specs
        if len(re.findall(r"[.!?](?:\s|$)", (spec.description or "").strip())) > 1
    }
    assert not long, f"descriptions of more than one sentence: {long}"


def test_core_is_the_ground_floor_and_no_module_imports_in_a_circle():
    """Catches: `core/` importing anything of the package outside `core/` (config, records,
    storage, tracking...), and an import circle among the package's modules (defs/datasets ->
    drops -> nih -> datasets was one)."""
    graph = _package_imports()
    upward = {
        m: sorted(d for d in deps if not d.startswith("xray_assets.core"))
        for m, deps in graph.items()
        if m.startswith("xray_assets.core")
    }
    assert not {m: d for m, d in upward.items() if d}, "core/ imports only core/"
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_files_are_put_in_place_by_the_one_atomic_writer():
    """Catches: a temp-file-then-rename written by hand (`os.replace`, `os.rename`, `tmp.replace`,
    `tmp.rename`) anywhere but `core/atomic.py`."""
    by_hand = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "core" / "atomic.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            if node.func.attr in ("replace", "rename") and (
                owner == "os" or "tmp" in owner.lower()
            ):
                by_hand.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert not by_hand, f"renames into place outside core/atomic.py: {by_hand}"


def test_the_tests_take_the_asset_order_from_the_graph():
    """Catches: the study's assets listed in order by hand in the package or the tests (the graph
    gives the order: `graph_order.study_assets` and `study_stages`)."""
    from xray_assets.definitions import defs
    from xray_assets.graph_order import study_assets

    study = set(study_assets(defs.resolve_asset_graph()))
    #: name lists that are sets, not orders: the design's asset list and the table assets
    allowed = {("test_graph.py", "DESIGN_ASSETS"), ("test_graph.py", "TABLE_ASSETS")}
    listed = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py")]):
        tree = ast.parse(path.read_text())
        names = {
            id(node.value): t.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if sum(1 for i in items if i in study) >= 5:
                    if (path.name, names.get(id(node))) not in allowed:
                        listed.append(f"{path.name}:{node.lineno}")
    assert not listed, f"study assets listed by hand (take them from the graph): {listed}"
