"""The serving check's rules on hand-made figures: both directions, which path serves, which path
the queue ranks on, the rank agreement, and a verdict kept only for the CPU it was taken on."""

import json
import tomllib

import pandas as pd
from conftest import ROOT

from xray_assets.config import ServeTolerance
from xray_assets.serve.quantize import (
    PathCheck,
    ServingCheck,
    _cached,
    choose,
    moved_figures,
    rank_agreement,
)

FLOAT = {"map50": 0.190, "precision": 0.50, "recall": 0.40}
TOL = ServeTolerance()


def test_a_gain_beyond_the_tolerance_moves_as_a_loss_does():
    # the demo's united_mass_nodule: INT8 0.469 against 0.190 passed the one-sided check
    gain = moved_figures(FLOAT, {**FLOAT, "map50": 0.469}, TOL)
    assert gain == ["AP50 +0.279 (0.469 against 0.190; allowed ±0.01)"]
    assert moved_figures(FLOAT, {**FLOAT, "map50": 0.170}, TOL)[0].startswith("AP50 -0.020")
    assert moved_figures(FLOAT, {**FLOAT, "map50": 0.199}, TOL) == []


def test_the_operating_point_is_held_to_its_own_tolerance_both_ways():
    assert moved_figures(FLOAT, {**FLOAT, "precision": 0.515, "recall": 0.385}, TOL) == []
    moved = moved_figures(FLOAT, {**FLOAT, "precision": 0.53, "recall": 0.37}, TOL)
    assert [m.split()[0:2] for m in moved] == [["precision", "+0.030"], ["recall", "-0.030"]]


def test_a_figure_defined_on_one_side_only_has_moved():
    nan = float("nan")
    assert moved_figures({**FLOAT, "precision": nan}, {**FLOAT, "precision": nan}, TOL) == []
    assert moved_figures(FLOAT, {**FLOAT, "recall": nan}, TOL)[0].startswith("recall undefined")


def test_the_first_path_that_holds_serves_and_the_queue_also_needs_its_ranking():
    int8 = PathCheck("int8", "int8", 0.19, 0.5, 0.4, rank_correlation=0.66)
    flt = PathCheck("float", "bf16", 0.19, 0.5, 0.4, rank_correlation=0.99)
    assert choose([int8, flt], TOL) == ("int8", "float")
    int8.moved = ["AP50 +0.279"]
    assert choose([int8, flt], TOL) == ("float", "float")
    flt.rank_correlation = 0.5
    assert choose([int8, flt], TOL) == ("float", "pytorch")
    assert choose([PathCheck("int8", error="export failed")], TOL) == ("pytorch", "pytorch")


def test_rank_agreement_is_spearman_and_constant_scores_agree_only_when_equal():
    a = pd.Series([0.1, 0.5, 0.9, 0.3], index=list("abcd"))
    assert rank_agreement(a, a * 2 + 1) == 1.0
    assert rank_agreement(a, -a) == -1.0
    assert rank_agreement(a, a[::-1]) == 1.0, "by image, not by position"
    flat = pd.Series([1.0] * 4, index=list("abcd"))
    assert rank_agreement(flat, flat) == 1.0 and rank_agreement(flat, a) == 0.0


def test_a_cached_verdict_answers_only_for_the_same_weights_tolerance_and_cpu(tmp_path):
    check = ServingCheck(
        "passed", "r", "int8", "int8", "abc", "x86_64 avx2", paths=[PathCheck("int8")]
    )
    record = tmp_path / "check.json"
    record.write_text(json.dumps(check.as_dict()))
    assert _cached(record, "abc", TOL, "x86_64 avx2").paths[0].path == "int8"
    assert _cached(record, "abc", TOL, "x86_64 avx2 amx_tile") is None, "another CPU"
    assert _cached(record, "abd", TOL, "x86_64 avx2") is None, "other weights"
    assert _cached(record, "abc", ServeTolerance(ap50=0.02), "x86_64 avx2") is None
    assert _cached(record, "abc", TOL, "x86_64 avx2", int8=False) is None, "INT8 since turned off"
    off = ServingCheck("off", "r", "float", "float", "abc", "x86_64 avx2")
    record.write_text(json.dumps(off.as_dict()))
    assert _cached(record, "abc", TOL, "x86_64 avx2", int8=False).verdict == "off"
    assert _cached(record, "abc", TOL, "x86_64 avx2") is None, "INT8 since turned on: try it"


def test_a_hang_fails_the_run_with_its_stacks():
    """pytest-timeout's signal method cannot interrupt a main thread blocked in C (an OpenVINO
    teardown deadlock sat for 20 minutes under it); the thread method can."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["timeout_method"] == "thread" and options["timeout"] > 0
