"""Code versions change when behaviour changes, and only then: each case edits a copy of the
package and loads its Definitions in a fresh interpreter (as the code location would)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PRINT = (
    "import json, xray_assets; from xray_assets.definitions import defs; g = defs.resolve_asset_graph(); "
    "print(json.dumps({'file': xray_assets.__file__, "
    "'versions': {k.to_user_string(): g.get(k).code_version for k in g.materializable_asset_keys}}))"
)


def versions(pkg_parent: Path, profile: str = "demo") -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(pkg_parent), "XRAY_PROFILE": profile}
    out = subprocess.run(
        [sys.executable, "-c", PRINT],
        env=env,
        cwd=pkg_parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(pkg_parent)), (
        f"the copy was not the one imported: {got['file']}"
    )
    return got["versions"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    parent = tmp_path_factory.mktemp("pkg")
    shutil.copytree(
        ROOT / "xray_assets", parent / "xray_assets", ignore=shutil.ignore_patterns("__pycache__")
    )
    return parent, versions(parent)


def edited(
    original, tmp_path, edits: dict[str, tuple[str, str]], profile: str = "demo"
) -> set[str]:
    """The assets whose code version differs after `edits` ({file: (old, new)}) from the original."""
    parent = tmp_path / "pkg"
    shutil.copytree(original[0], parent)
    for rel, (old, new) in edits.items():
        p = parent / "xray_assets" / rel
        text = p.read_text()
        assert old in text, f"{rel}: {old!r} not found"
        p.write_text(text.replace(old, new, 1))
    base = original[1] if profile == "demo" else versions(original[0], profile)
    now = versions(parent, profile)
    assert set(now) == set(base)
    return {k for k in now if now[k] != base[k]}


def test_comments_docstrings_and_layout_change_no_version(original, tmp_path):
    changed = edited(
        original,
        tmp_path,
        {
            "config.py": (
                "    epochs: int = 100\n",
                "    epochs: int = 100   # the study's 100 epochs\n# a comment\n",
            ),
            "train.py": ('"""', '"""A new first line of the docstring.\n'),
            "core/labels.py": (
                "def _parse_age(value) -> float:\n",
                "def _parse_age(value) -> float:  # years\n\n",
            ),
            "core/classes.py": (
                "NIH_CLASSES: tuple[str, ...] = (",
                "# the order is the model's class index\nNIH_CLASSES: tuple[str, ...] = (",
            ),
            "core/dicom.py": ("def read_dicom(", "# decoding, bounded\ndef read_dicom("),
        },
    )
    assert changed == set()


def test_a_class_map_change_reaches_the_steps_that_read_it(original, tmp_path):
    changed = edited(
        original, tmp_path, {"core/classes.py": ('"Nodule": "Mass/Nodule",', '"Nodule": "Nodule",')}
    )
    # NIH_TO_UNITED is read (through a function-level import) by the dataset builder, and by the
    # annotation queue and batches (which findings are candidates of a task, and their labels)
    assert changed == {"yolo_datasets", "annotation_queue", "annotation_batches"}
    # VinBigData's Lung Opacity (7) joins the united Infiltrate: the consensus step re-runs
    changed = edited(
        original,
        tmp_path / "b",
        {
            "core/classes.py": (
                '    6: "Infiltrate",\n',
                '    6: "Infiltrate",\n    7: "Infiltrate",\n',
            )
        },
    )
    assert "vinbigdata_boxes" in changed and not changed & {
        "patient_splits",
        "nih_labels",
        "trained_models",
    }
    # a VinBigData class renamed: the table's label column changes, so its reader re-runs
    changed = edited(
        original, tmp_path / "c", {"core/classes.py": ('10: "Pleural effusion"', '10: "Effusion"')}
    )
    assert "vinbigdata_annotations" in changed and "patient_splits" not in changed


def test_a_helper_change_counts_and_an_unrelated_function_does_not(original, tmp_path):
    changed = edited(original, tmp_path, {"core/labels.py": ('"W": n / 52', '"W": n / 52.0 * 1.0')})
    assert changed == {"nih_labels"}, "_parse_age is called by read_nih_labels_checked only"


@pytest.mark.parametrize("setting", [("epochs=12,", "epochs=13,"), ("imgsz=160,", "imgsz=192,")])
def test_a_training_setting_of_the_profile_retrains_and_nothing_else(original, tmp_path, setting):
    assert edited(original, tmp_path, {"config.py": setting}) == {"trained_models"}


def test_another_profiles_setting_does_not_touch_this_ones_training(original, tmp_path):
    # the smoke profile's epochs: the demo code location's trained_models keeps its version
    assert (
        edited(
            original,
            tmp_path,
            {"config.py": ("\n            epochs=1,", "\n            epochs=2,")},
        )
        == set()
    )


def test_smoke_profile_setting_retrains_under_the_smoke_profile(original, tmp_path):
    edit = {"config.py": ("\n            epochs=1,", "\n            epochs=2,")}
    assert edited(original, tmp_path, edit, profile="smoke") == {"trained_models"}


PROBE = Path(__file__).parent / "automation_probe.py"


def probe(pkg_parent: Path, home: Path, mode: str, cursor: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(pkg_parent),
        "DAGSTER_HOME": str(home),
        "XRAY_PROFILE": "demo",
    }
    out = subprocess.run(
        [sys.executable, str(PROBE), mode, str(cursor)],
        env=env,
        cwd=pkg_parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # edited copies of the package, Dagster evaluated in subprocesses
def test_automation_after_an_edit_requests_exactly_what_the_edit_affects(original, tmp_path):
    """Dagster's own evaluation of the assets' automation conditions, on a study whose every asset
    and check is recorded as done: a comment-only edit requests nothing, a class-map edit the
    datasets, a training setting the models (all six task partitions each)."""
    from conftest import project_dagster_home

    home = project_dagster_home(tmp_path / "home")
    cursor = tmp_path / "cursor"
    assert probe(original[0], home, "seed", cursor) == {}
    cases = {
        "comment": (
            {
                "train.py": ("\ndef ", "\n# a comment\ndef "),
                "config.py": ("\nclass ", "\n# note\nclass "),
                "core/classes.py": (
                    '"Nodule": "Mass/Nodule",',
                    '"Nodule": "Mass/Nodule",  # both NIH',
                ),
            },
            {},
        ),
        "class map": (
            {"core/classes.py": ('"Nodule": "Mass/Nodule",', '"Nodule": "Nodule",')},
            {"yolo_datasets": 6, "annotation_queue": 6},
        ),
        "epochs": ({"config.py": ("epochs=12,", "epochs=13,")}, {"trained_models": 6}),
    }
    for name, (edits, expected) in cases.items():
        parent = tmp_path / name.replace(" ", "_")
        shutil.copytree(original[0], parent)
        for rel, (old, new) in edits.items():
            p = parent / "xray_assets" / rel
            assert old in p.read_text()
            p.write_text(p.read_text().replace(old, new, 1))
        assert probe(parent, home, "check", cursor) == expected, name
