"""Fixtures of the robustness suite (issue 20): each test reports its figures with ``figures(...)``.

The figures are printed (seen with ``-s``) and kept as the test's user properties, which the
summary hook in tests/conftest.py prints at the end of the run (also under xdist).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def figures(request) -> Callable[..., None]:  # noqa: ANN001
    def note(**values: object) -> None:
        line = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
        print(f"\nFIGURES {request.node.nodeid}: {line}")
        request.node.user_properties.append(("figures", line))
    return note
