"""Where settings come from: the YAML file, then ``KD_`` environment variables.

Sources, later ones winning: the YAML file of CONTRACT section 6, then
environment variables named ``KD_`` + the key path in capitals joined by
``__``, list items by index: ``KD_KAFKA__BOOTSTRAP_SERVERS``,
``KD_DESTINATIONS__0__STREAM``, ``KD_DESTINATIONS__0__AUTH__SECRET_ACCESS_KEY``.
Values from the environment are parsed as YAML scalars or flow lists
(``KD_DESTINATIONS__0__PARTITION_KEY_NAMESPACES='[ecid, email]'``).

pydantic-settings' own environment source cannot address list items by index,
and destinations are a list; so the two sources are merged here and the result
validated by pydantic. docs/configuration.md lists every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from worker.settings._checks import ConfigError
from worker.settings._schema import Settings

ENV_PREFIX = "KD_"


def load_settings(
    path: Path | str | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Reads, merges and validates the configuration; raises ConfigError naming the key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded, duplicates = _load_yaml(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"configuration file {path} is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"configuration file {path} is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        if duplicates:
            raise ConfigError(
                "invalid configuration:\n  "
                + "\n  ".join(
                    f"{key}: set twice in {path}, at lines {first} and {second}"
                    for key, first, second in duplicates
                )
            )
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
        data = loaded or {}
    for keys, value in _environment_overrides(os.environ if environ is None else environ):
        _set_path(data, keys, value)
    for dotted, override in (overrides or {}).items():
        if override is not None:
            _set_path(data, dotted.split("."), override)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _load_yaml(text: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """Parses one YAML document (safely), and finds the keys set twice in a mapping.

    PyYAML keeps the last value of a repeated key without a word. Returns the
    data and, for each repeat, its key path and the lines of the first and the
    repeated key. Keys merged in with "<<" are defaults, not repeats.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        duplicates: list[tuple[str, int, int]] = []
        walked: set[int] = set()

        def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
            if id(node) in walked:  # an alias of a node walked already
                return
            walked.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, (*path, str(index)))
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        walk(value_node, path)
                        continue
                    key = str(key_node.value)
                    if isinstance(key_node, yaml.ScalarNode):
                        # Compared as constructed: "true" and "True" are one key.
                        constructed = loader.construct_object(key_node)
                        key = str(constructed)
                        line = key_node.start_mark.line + 1
                        if constructed in first_lines:
                            duplicates.append(
                                (".".join((*path, key)), first_lines[constructed], line)
                            )
                        else:
                            first_lines[constructed] = line
                    walk(value_node, (*path, key))

        walk(root, ())
        return loader.construct_document(root), duplicates
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own text quotes the offending line, which may hold a secret.
    if isinstance(exc, yaml.MarkedYAMLError):
        where = []
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
            if text and mark is not None:
                where.append(f"{text} at line {mark.line + 1}, column {mark.column + 1}")
            elif text:
                where.append(text)
        return "; ".join(where) or "syntax error"
    return "syntax error"


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    found = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        value: Any = raw
        # Lists and mappings are written as YAML flow collections; every other
        # value stays a string (pydantic converts numbers and booleans) so that
        # "Top #1" or "Sales: EMEA" are not mangled by YAML.
        if raw[:1] in ("[", "{"):
            try:
                value, duplicates = _load_yaml(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: not a valid YAML list or mapping") from None
            if duplicates:
                raise ConfigError(f"{name}: {duplicates[0][0]} is set twice")
        found.append((keys, value))
    # List items must be applied by ascending index: 2 before 10.
    found.sort(key=lambda item: [(0, int(k), "") if k.isdigit() else (1, 0, k) for k in item[0]])
    return found


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    where: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(where, list):
            if not key.isdigit():
                raise ConfigError(f"{'.'.join(keys)}: {key!r} must be a list index")
            index = int(key)
            if index > len(where):
                raise ConfigError(f"{'.'.join(keys)}: index {index} skips list items")
            if index == len(where):
                where.append(value if last else {})
            elif last:
                where[index] = value
            elif not isinstance(where[index], dict | list):
                where[index] = [] if keys[depth + 1].isdigit() else {}
            where = where[index]
        else:
            if last:
                where[key] = value
            else:
                child = where.get(key)
                if not isinstance(child, dict | list):
                    child = [] if keys[depth + 1].isdigit() else {}
                    where[key] = child
                where = child


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
