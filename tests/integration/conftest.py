"""Integration tests: every test here is marked `integration`; figures they report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest

from tests.integration.harness import Report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def report(
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> Report:
    """report(name, figures, text): the figures as the test's JUnit property ``name``
    (JSON, read by bench/flakes.py), and the text printed even without -s."""

    def keep(name: str, figures: Mapping[str, Any], text: str) -> None:
        record_property(name, orjson.dumps(figures).decode())
        with capsys.disabled():
            print(text)

    return keep
