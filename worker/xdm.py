"""Profile attributes as XDM objects: merging partial updates, selecting paths.

Values are JSON trees (dict / list / str / int / float / bool). Functions here
never mutate their inputs, but results may share unchanged subtrees with them:
treat every tree as immutable once built (Faust tables only persist values
that are reassigned, and the stored profile is never edited in place).

Empty objects carry no information in XDM, so a merge never stores one: an
object left empty by removals is pruned, and an empty object patch adds
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

__all__ = [
    "Path",
    "compile_path",
    "compile_paths",
    "deep_merge",
    "get_path",
    "project",
    "same_value",
    "selected_values_differ",
]

Path: TypeAlias = tuple[str, ...]
"""A compiled dotted XDM path: ``"person.name.lastName"`` -> ``("person", "name", "lastName")``."""

_MISSING: Final = object()


def compile_path(path: str) -> Path:
    """Split a dotted path (valid: worker.settings checks the configured ones)."""
    return tuple(path.split("."))


def compile_paths(paths: Iterable[str]) -> tuple[Path, ...]:
    """Compile once per destination so the per-event path does no splitting."""
    return tuple(compile_path(p) for p in paths)


def deep_merge(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` updated by the partial update ``patch``, as a new dict.

    Objects merge recursively; ``null`` removes a leaf or subtree; any other
    value (lists included) replaces what was there whole.
    """
    out = dict(stored)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            current = out.get(key, _MISSING)
            if isinstance(current, Mapping):
                merged = deep_merge(current, value)
                if merged:
                    out[key] = merged
                else:  # emptied by removals: prune the parent
                    del out[key]
            else:
                # Absent or a leaf: the object replaces it, unless the patch
                # holds nothing but removals (then there is nothing to set).
                merged = deep_merge({}, value)
                if merged:
                    out[key] = merged
        else:
            out[key] = value
    return out


def get_path(tree: Mapping[str, Any], path: str | Sequence[str], default: Any = None) -> Any:
    """The value at ``path``, or ``default`` when absent or under a non-object."""
    node: Any = tree
    for part in path.split(".") if isinstance(path, str) else path:
        if not isinstance(node, Mapping):
            return default
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return default
    return node


def _copy_objects(value: Any) -> Any:
    # Objects are copied so that later paths written into the result can
    # never reach into the stored profile; lists are never written into.
    if isinstance(value, Mapping):
        return {k: _copy_objects(v) for k, v in value.items()}
    return value


def project(attributes: Mapping[str, Any], paths: Sequence[str | Path]) -> dict[str, Any]:
    """Only the selected paths of ``attributes``, each at its own XDM path.

    Keys appear in the order of ``paths``; a path the profile lacks (or that
    runs through a non-object) is left out. ``paths`` may be dotted strings or
    compiled ``Path`` tuples.
    """
    result: dict[str, Any] = {}
    for path in paths:
        parts: Sequence[str] = path.split(".") if isinstance(path, str) else path
        value = get_path(attributes, parts, _MISSING)
        if value is _MISSING:
            continue
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            # Every value comes from the same tree, so an existing entry on
            # the way down is always an object.
            node = child
        # Assigning to an existing key keeps its position; the new value is a
        # superset of anything an earlier, longer path put there.
        node[parts[-1]] = _copy_objects(value)
    return result


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: unlike ``==``, ``1``, ``1.0`` and ``true`` all differ.

    They serialize differently, so a change between them is a change of the
    exported record.
    """
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            other = b.get(key, _MISSING)
            if other is _MISSING or not same_value(value, other):
                return False
        return True
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def selected_values_differ(
    before: Mapping[str, Any], after: Mapping[str, Any], paths: Sequence[str | Path]
) -> bool:
    """Whether any selected path changed value; appearing or vanishing counts."""
    for path in paths:
        if not same_value(get_path(before, path, _MISSING), get_path(after, path, _MISSING)):
            return True
    return False
