"""Rules of the house that a reader cannot see at a glance: `core/` imports no Dagster, and Dagster's
private modules (`dagster._...`) are imported in one adapter only (`backfill.py`)."""

import ast

from conftest import ROOT

PACKAGE = ROOT / "xray_assets"


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


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
    assert set(private) == {"backfill.py"}, (
        f"private Dagster imports outside the adapter: {private}"
    )
