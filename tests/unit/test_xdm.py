"""Merging partial profile updates and selecting XDM paths.

The worker's functions are checked against the examples below and, on generated
profiles and patches, against the reference model of the contract (`reference.xdm`,
shared with `make demo`); the examples hold for the reference model too.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference import xdm as ref
from worker.xdm import (
    compile_paths,
    deep_merge,
    get_path,
    project,
    same_value,
    selected_values_differ,
)

STORED: dict[str, Any] = {
    "person": {"name": {"firstName": "Ana", "lastName": "Silva"}, "gender": "female"},
    "personalEmail": {"address": "ana@example.com"},
    "loyalty": {"points": 10, "tiers": ["gold", "silver"]},
}


@pytest.mark.parametrize(
    ("stored", "patch", "expected"),
    [
        ({}, {}, {}),
        (STORED, {}, STORED),
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        # objects merge recursively
        (
            STORED,
            {"person": {"name": {"lastName": "Souza"}}},
            {
                **STORED,
                "person": {**STORED["person"], "name": {"firstName": "Ana", "lastName": "Souza"}},
            },
        ),
        # null removes a leaf
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}, {"a": {"c": 2}}),
        # null removes a subtree
        ({"a": {"b": {"c": 1}}, "d": 1}, {"a": None}, {"d": 1}),
        # parents left empty are pruned, all the way up
        ({"a": {"b": {"c": 1}}, "d": 1}, {"a": {"b": {"c": None}}}, {"d": 1}),
        ({"a": {"b": {"c": 1}, "e": 2}}, {"a": {"b": {"c": None}}}, {"a": {"e": 2}}),
        # removing what is not there changes nothing
        ({"a": 1}, {"x": None}, {"a": 1}),
        ({"a": 1}, {"x": {"y": None}}, {"a": 1}),
        ({"a": 1}, {"a": {"y": None}}, {"a": 1}),
        # an empty object adds nothing
        ({"a": 1}, {"x": {}}, {"a": 1}),
        ({"a": {"b": 1}}, {"a": {}}, {"a": {"b": 1}}),
        # a non-object replaces an object, and an object replaces a leaf
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
        ({"a": 5}, {"a": {"b": 1, "c": None}}, {"a": {"b": 1}}),
        # lists are values, replaced whole (nulls inside them are data)
        ({"t": [1, 2, 3]}, {"t": [4]}, {"t": [4]}),
        ({"t": [1]}, {"t": [{"x": None}]}, {"t": [{"x": None}]}),
        ({"t": [1]}, {"t": []}, {"t": []}),
        ({"a": {"b": 1}}, {"a": []}, {"a": []}),
        # scalars of every JSON type
        ({}, {"s": "", "f": 0.5, "z": 0, "b": False}, {"s": "", "f": 0.5, "z": 0, "b": False}),
        # set and remove in one patch
        ({"a": 1, "b": 2}, {"a": None, "c": 3}, {"b": 2, "c": 3}),
    ],
)
def test_deep_merge(
    stored: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    before_stored, before_patch = copy.deepcopy(stored), copy.deepcopy(patch)
    merged = deep_merge(stored, patch)
    assert merged == expected
    assert merged is not stored
    assert stored == before_stored
    assert patch == before_patch
    assert ref.merge(stored, patch) == expected


def test_deep_merge_keeps_key_order() -> None:
    merged = deep_merge({"a": 1, "b": 2}, {"a": 3, "c": 4})
    assert list(merged) == ["a", "b", "c"]


def test_deep_merge_nested_results_are_new_objects() -> None:
    stored = {"a": {"b": {"c": 1}}}
    merged = deep_merge(stored, {"a": {"b": {"d": 2}}})
    assert merged["a"] is not stored["a"]
    assert merged["a"]["b"] is not stored["a"]["b"]
    assert stored == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], {}),
        (["person.name.lastName"], {"person": {"name": {"lastName": "Silva"}}}),
        (
            ["person.name.lastName", "personalEmail.address"],
            {
                "person": {"name": {"lastName": "Silva"}},
                "personalEmail": {"address": "ana@example.com"},
            },
        ),
        # siblings under one parent are grouped
        (
            ["person.name.lastName", "personalEmail.address", "person.gender"],
            {
                "person": {"name": {"lastName": "Silva"}, "gender": "female"},
                "personalEmail": {"address": "ana@example.com"},
            },
        ),
        # missing paths are left out
        (["person.name.middleName"], {}),
        (["nope"], {}),
        (
            ["person.phone.number", "person.name.firstName"],
            {"person": {"name": {"firstName": "Ana"}}},
        ),
        # a path through a non-object is left out
        (["person.gender.code"], {}),
        (["loyalty.tiers.0"], {}),
        # an object value is copied whole; lists are values
        (["person.name"], {"person": {"name": {"firstName": "Ana", "lastName": "Silva"}}}),
        (["loyalty.tiers"], {"loyalty": {"tiers": ["gold", "silver"]}}),
        # overlapping paths, either order
        (
            ["person.name", "person.name.lastName"],
            {"person": {"name": {"firstName": "Ana", "lastName": "Silva"}}},
        ),
        (
            ["person.name.lastName", "person.name"],
            {"person": {"name": {"firstName": "Ana", "lastName": "Silva"}}},
        ),
        (["person.gender", "person.gender"], {"person": {"gender": "female"}}),
    ],
)
def test_project(paths: list[str], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(STORED)
    assert project(STORED, paths) == expected
    assert project(STORED, compile_paths(paths)) == expected
    assert before == STORED
    assert ref.project(STORED, paths) == expected


def test_project_follows_path_order() -> None:
    result = project(STORED, ["personalEmail.address", "person.gender", "person.name.firstName"])
    assert list(result) == ["personalEmail", "person"]
    assert list(result["person"]) == ["gender", "name"]


def test_project_copies_objects() -> None:
    result = project(STORED, ["person.name", "person.name.lastName"])
    assert result["person"]["name"] is not STORED["person"]["name"]
    result["person"]["name"]["lastName"] = "changed"
    assert STORED["person"]["name"]["lastName"] == "Silva"


def test_project_keeps_falsy_values() -> None:
    attrs = {"a": {"zero": 0, "empty": "", "no": False, "list": []}}
    paths = ["a.zero", "a.empty", "a.no", "a.list"]
    assert project(attrs, paths) == attrs


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("person.name.lastName", "Silva"),
        (("person", "name", "lastName"), "Silva"),
        ("person.name.nope", None),
        ("person.gender.code", None),
        ("nope", None),
    ],
)
def test_get_path(path: str | tuple[str, ...], expected: Any) -> None:
    assert get_path(STORED, path) == expected
    assert ref.get_path(STORED, path) == (ref.MISSING if expected is None else expected)


def test_compile_paths() -> None:
    assert compile_paths(["a", "b.c"]) == (("a",), ("b", "c"))


@pytest.mark.parametrize(
    ("before", "after", "paths", "differ"),
    [
        ({}, {}, ["a"], False),
        ({"a": 1}, {"a": 1}, ["a"], False),
        ({"a": 1}, {"a": 2}, ["a"], True),
        ({"a": 1}, {}, ["a"], True),  # vanishing counts
        ({}, {"a": 1}, ["a"], True),  # appearing counts
        ({"a": 1, "b": 1}, {"a": 1, "b": 2}, ["a"], False),  # unselected change
        ({"a": 1, "b": 1}, {"a": 1, "b": 2}, ["a", "b"], True),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, ["a"], True),  # object value
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, ["a.b"], False),
        ({"a": [1, 2]}, {"a": [2, 1]}, ["a"], True),
        ({"a": 1}, {"a": 1.0}, ["a"], True),  # serializes differently
        ({"a": 1}, {"a": True}, ["a"], True),
        ({"a": None}, {}, ["a"], True),
        ({"a": 5}, {"a": {"b": 5}}, ["a.b"], True),
        ({}, {"a": 1}, [], False),
    ],
)
def test_selected_values_differ(
    before: dict[str, Any], after: dict[str, Any], paths: list[str], differ: bool
) -> None:
    assert selected_values_differ(before, after, paths) is differ
    assert selected_values_differ(before, after, compile_paths(paths)) is differ
    assert ref.values_differ(before, after, paths) is differ


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (1, 1, True),
        (1, 1.0, False),
        (0, False, False),
        ("a", "a", True),
        (None, None, True),
        ([1, {"a": [True]}], [1, {"a": [True]}], True),
        ([1, {"a": [True]}], [1, {"a": [1]}], False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),  # key order is not a value change
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1}, {"b": 1}, False),
        ([1], [1, 2], False),
    ],
)
def test_same_value(a: Any, b: Any, same: bool) -> None:
    assert same_value(a, b) is same
    assert same_value(b, a) is same
    assert ref.same_value(a, b) is same


# --- properties -------------------------------------------------------------------

# Recursive JSON strategies can be slow to warm up on a loaded CI machine; the
# tests themselves are fast, so only the generation-speed check is relaxed.
_relaxed = settings(suppress_health_check=[HealthCheck.too_slow])

_keys = st.sampled_from(["a", "b", "c", "person", "name"])
_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=12,
)
_patches = st.dictionaries(_keys, _json, max_size=4)


def _stored(value: Any) -> dict[str, Any]:
    # Stored profiles come from merges, so they hold no null and no empty object.
    return deep_merge({}, value) if isinstance(value, dict) else {}


_profiles = _patches.map(_stored)
_paths = st.lists(st.lists(_keys, min_size=1, max_size=3).map(".".join), max_size=5)


@_relaxed
@given(_profiles)
def test_merge_with_empty_patch_is_identity(stored: dict[str, Any]) -> None:
    assert deep_merge(stored, {}) == stored


@_relaxed
@given(_profiles, _patches)
def test_merge_never_mutates(stored: dict[str, Any], patch: dict[str, Any]) -> None:
    before_stored, before_patch = copy.deepcopy(stored), copy.deepcopy(patch)
    deep_merge(stored, patch)
    assert stored == before_stored
    assert patch == before_patch


@_relaxed
@given(_profiles, _patches)
def test_merge_matches_reference(stored: dict[str, Any], patch: dict[str, Any]) -> None:
    assert deep_merge(stored, patch) == ref.merge(stored, patch)


@_relaxed
@given(_profiles, _patches)
def test_merge_is_idempotent(stored: dict[str, Any], patch: dict[str, Any]) -> None:
    once = deep_merge(stored, patch)
    assert deep_merge(once, patch) == once


def _no_empty_objects(value: Any) -> bool:
    if isinstance(value, dict):
        return all(v is not None for v in value.values()) and all(
            (not isinstance(v, dict) or v) and _no_empty_objects(v) for v in value.values()
        )
    return True


@_relaxed
@given(_profiles, _patches)
def test_merge_never_stores_null_or_empty_objects(
    stored: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert _no_empty_objects(deep_merge(stored, patch))


@_relaxed
@given(_profiles, _patches, _paths)
def test_merge_then_project(
    stored: dict[str, Any], patch: dict[str, Any], paths: list[str]
) -> None:
    merged = deep_merge(stored, patch)
    projected = project(merged, paths)
    expected: dict[str, Any] = {}
    for path in paths:
        value = ref.get_path(ref.merge(stored, patch), path)
        if value is ref.MISSING:
            assert get_path(projected, path, ref.MISSING) is ref.MISSING
            continue
        # Each selected value sits at its own path, unchanged.
        assert same_value(get_path(projected, path), value)
        expected = deep_merge(expected, _nest(path, value))
    # And nothing else is there.
    assert projected == expected


def _nest(path: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(path.split(".")):
        node = {part: node}
    result: dict[str, Any] = node
    return result


@_relaxed
@given(_profiles, _paths)
def test_project_is_a_subtree(stored: dict[str, Any], paths: list[str]) -> None:
    projected = project(stored, paths)
    assert deep_merge(stored, projected) == stored
    assert not selected_values_differ(stored, projected, paths)


@_relaxed
@given(_profiles, _paths)
def test_project_matches_reference(stored: dict[str, Any], paths: list[str]) -> None:
    projected = project(stored, paths)
    expected = ref.project(stored, paths)
    assert projected == expected
    assert json.dumps(projected) == json.dumps(expected)  # key order too


@_relaxed
@given(_profiles, _patches, _paths)
def test_selected_values_differ_matches_reference(
    stored: dict[str, Any], patch: dict[str, Any], paths: list[str]
) -> None:
    merged = deep_merge(stored, patch)
    assert selected_values_differ(stored, merged, paths) is ref.values_differ(stored, merged, paths)


# Few, look-alike values (1, 1.0, true), so that equal and unequal pairs both come up.
_look_alike = st.recursive(
    st.sampled_from([0, 1, 1.0, True, False, None, "1"]),
    lambda children: (
        st.lists(children, max_size=2)
        | st.dictionaries(st.sampled_from("ab"), children, max_size=2)
    ),
    max_leaves=4,
)


@_relaxed
@given(_look_alike, _look_alike)
def test_same_value_matches_reference(a: Any, b: Any) -> None:
    assert same_value(a, b) is ref.same_value(a, b)
    assert ref.same_value(a, copy.deepcopy(a))
