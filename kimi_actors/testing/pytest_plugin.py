"""The ``fake_kimi`` pytest fixture, installed with kimi_actors as a pytest plugin.

``fake_kimi`` yields a started :class:`~kimi_actors.testing.FakeKimi`, closed after the test.
Override the ``fake_kimi_options`` fixture (a dict of FakeKimi keyword arguments) in a
conftest.py, a module or a class to configure it, or parametrize it indirectly::

    @pytest.fixture
    def fake_kimi_options():
        return {"limits": Limits(rpm=3, minute=1.0), "faults": Faults(drop=0.2)}

The fixture needs pytest-asyncio; without it this plugin defines nothing, so installing
kimi_actors never breaks a test suite that does not use it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .server import FakeKimi

__all__: list[str] = []

if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    __all__ += ["fake_kimi", "fake_kimi_options"]

    @pytest.fixture
    def fake_kimi_options(request: pytest.FixtureRequest) -> dict[str, Any]:
        """Keyword arguments for the ``fake_kimi`` server: empty (the defaults) unless
        overridden, or given by indirect parametrization."""
        param = getattr(request, "param", None)
        return dict(param) if param else {}

    @pytest_asyncio.fixture
    async def fake_kimi(fake_kimi_options: dict[str, Any]) -> AsyncIterator[FakeKimi]:
        """A started FakeKimi on loopback, closed after the test."""
        async with FakeKimi(**fake_kimi_options) as fake:
            yield fake
