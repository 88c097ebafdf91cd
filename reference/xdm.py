"""Profile attributes by the contract: partial updates, selected paths, value changes.

docs/contract.md section 1 (`profile-updates`) and section 3 (Attributes). Written to
be read, not to be fast: every result is a fresh deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

Json = dict[str, Any]
Path = str | Sequence[str]  # "person.name.lastName" or ("person", "name", "lastName")

MISSING: Final = object()
"""What `get_path` answers for a path the tree does not have."""


def parts(path: Path) -> tuple[str, ...]:
    return tuple(path.split(".")) if isinstance(path, str) else tuple(path)


def get_path(tree: Mapping[str, Any], path: Path) -> Any:
    """The value at `path`, or `MISSING` when absent or under a non-object."""
    node: Any = tree
    for part in parts(path):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def merge(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> Json:
    """`stored` with the partial update `patch` deep-merged into it, as a new tree.

    Objects merge key by key; `null` removes a leaf or a whole subtree; any other
    value (a list too) replaces what was stored. An object left empty by removals
    is removed, and an object in the patch that sets nothing adds nothing (a leaf
    stored there stays).
    """
    out = copy.deepcopy(dict(stored))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key)
            merged = merge(base if isinstance(base, dict) else {}, value)
            if merged:
                out[key] = merged
            elif isinstance(base, dict):
                out.pop(key)
        else:
            out[key] = copy.deepcopy(value)
    return out


def project(attributes: Mapping[str, Any], paths: Iterable[Path]) -> Json:
    """Only the selected paths, each at its own XDM path, in the order of `paths`.

    A path the profile lacks is left out; a selected object is copied whole.
    """
    result: Json = {}
    for path in paths:
        value = get_path(attributes, path)
        if value is MISSING:
            continue
        *parents, leaf = parts(path)
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return result


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON: `1`, `1.0` and `true` are three values; key order does not count."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def values_differ(
    before: Mapping[str, Any], after: Mapping[str, Any], paths: Iterable[Path]
) -> bool:
    """Whether any selected attribute appears, changes or disappears."""
    return any(not same_value(get_path(before, p), get_path(after, p)) for p in paths)
