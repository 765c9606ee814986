"""Classes 4 and 5 for tables and recipes: strict schema (which key, what was expected), and
ranges that would give a model of garbage refused wherever they enter."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptq_cli.calibration.table import CalibrationTable
from ptq_cli.errors import CalibrationError, UsageError
from ptq_cli.recipe import Recipe
from tests.robustness.harness import invoke

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=5)
                           | st.floats(allow_nan=True, allow_infinity=True),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=6)


@pytest.fixture(scope="module")
def table_dict(tmp_path_factory) -> dict:
    from tests.robustness.conftest import make_work

    work = make_work(tmp_path_factory.mktemp("table"))
    assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "--method", "entropy",
                  "--moving-average", "0.5", "-q").code == 0
    return json.loads((work / "model.calib.json").read_text())


def _paths(value, prefix=()):
    """Every key path of a JSON document (lists capped: histograms hold thousands of counts)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            yield from _paths(item, prefix + (i,))


def _replace(doc, path, new):
    doc = copy.deepcopy(doc)
    if not path:
        return new
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return doc


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edited_table_loads_or_is_refused_by_key(table_dict, data):
    paths = list(_paths(table_dict))
    path = data.draw(st.sampled_from(paths))
    edited = _replace(table_dict, path, data.draw(JSON_VALUES))
    try:
        table = CalibrationTable.from_dict(edited, "t.json")
    except CalibrationError as exc:
        assert str(exc).startswith("t.json") and "\n" not in str(exc)
        return
    for name in table.names:   # what loads is sane
        lo, hi = table.range(name)
        assert lo <= hi and abs(lo) < 1e30 and abs(hi) < 1e30


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.__setitem__("tensors", list(d["tensors"].values())), ("key tensors", "an object")),
    (lambda d: d["tensors"]["x"].__setitem__("range", [5.0, -5.0]), ("'x'", "inverted")),
    (lambda d: d["tensors"]["x"].__setitem__("range", [0.0, 1e300]), ("'x'", "float32")),
    (lambda d: d["tensors"]["x"].__setitem__("range", [float("nan"), 1.0]), ("tensors.x.range[0]", "finite")),
    (lambda d: d["tensors"]["x"].__setitem__("max", -1e9), ("'x'", "inverted")),
    (lambda d: d.__setitem__("samples", "many"), ("key samples", "integer")),
    (lambda d: d["tensors"]["x"].__setitem__("surprise", 1), ("unknown key", "surprise")),
])
def test_hand_edited_tables_are_refused_by_key_in_every_command(work, table_dict, edit, words):
    bad = copy.deepcopy(table_dict)
    edit(bad)
    (work / "bad.json").write_text(json.dumps(bad))
    for command in (("quantize", work / "model.onnx", "--calibration", work / "bad.json", "--objective", "size"),
                    ("calibrate", "merge", work / "bad.json", "-o", work / "m.json"),
                    ("inspect", work / "model.onnx", "--calibration", work / "bad.json")):
        run = invoke(work, *command)
        if command[0] == "inspect" and run.code == 2:
            continue   # inspect refuses a float model before reading the table
        run.refused(3, "bad.json", *words)


def test_merging_a_shard_twice_is_refused(work):
    for k in (0, 1):
        assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "--shard", f"{k}/2",
                      "-q").code == 0
    s0, s1 = work / "model.calib.shard-0-of-2.json", work / "model.calib.shard-1-of-2.json"
    (work / "copy.json").write_bytes(s0.read_bytes())
    invoke(work, "calibrate", "merge", s0, s1, work / "copy.json", "-o", work / "m.json").refused(3, "shard 0/2", "twice")
    assert invoke(work, "calibrate", "merge", s0, s1, "-o", work / "m.json").code == 0


@pytest.mark.parametrize("content, words", [
    (b'{"exclude": 5}', ("recipe.exclude", "a list of strings", "int")),
    (b'{"exclude": "conv1"}', ("recipe.exclude", "a list of strings", "str")),
    (b'{"dynamic": "false"}', ("recipe.dynamic", "true or false")),
    (b'{"calibration": {"bins": 1e3}}', ("recipe.calibration.bins", "an integer")),
    (b'{"calibration": {"bins": 100000000000000000000}}', ("bins must be between 16 and",)),
    (b'{"weights": {"granularity": {"kind": "per_channel", "axis": "0"}}}', ("axis", "integer")),
    (b'\xff\xfe{"dynamic": true}', ("not UTF-8", "0xff")),
    (b'{"dynamic": tru', ("not valid JSON",)),
    (b'[]', ("must be an object",)),
    (b'{"weigths": {}}', ("unknown key", "weigths")),
])
def test_malformed_recipes_name_the_key(work, content, words):
    (work / "r.json").write_bytes(content)
    invoke(work, "quantize", work / "model.onnx", "--recipe", work / "r.json", "--dynamic").refused(2, "r.json", *words)


def test_recipes_that_round_trip_still_load():
    recipe = Recipe(exclude=("conv1", "Softmax"), seed=3)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(UsageError, match="seed"):
        Recipe.from_dict({"seed": True})


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_edited_histograms_are_refused_or_recompute_and_merge(table_dict, data):
    from ptq_cli.calibration.table import merge
    from ptq_cli.recipe import CalibMethod, CalibrationSpec

    name = data.draw(st.sampled_from(sorted(table_dict["tensors"])))
    key = data.draw(st.sampled_from(["bins", "width_exponent", "origin_bin", "counts", "min", "max", "width"]))
    value = data.draw(st.integers(-70, 5000) | st.lists(st.integers(0, 10**6), max_size=20) | st.floats(-1e6, 1e6))
    edited = copy.deepcopy(table_dict)
    edited["tensors"][name]["histogram"][key] = value
    try:
        table = CalibrationTable.from_dict(edited, "t.json")
        table.with_method(CalibrationSpec(method=data.draw(st.sampled_from(list(CalibMethod))), bins=512))
        merge([table, CalibrationTable.from_dict(table_dict, "u.json")])
    except CalibrationError as exc:
        assert "\n" not in str(exc)
