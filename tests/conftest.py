"""Shared test set-up: this directory is on sys.path, so every test can import ``hostile``.

Hypothesis profiles (``HYPOTHESIS_PROFILE`` picks one; CI=true means ``ci``):

- ``ci``: derandomized. A CI run must be reproducible: a failure seen once is seen again on
  the same commit, and a green run is not luck. Failing examples are still printed in full,
  with the blob to replay them, so nothing fails silently.
- ``dev`` (the default elsewhere): random, so local runs keep exploring new inputs, and the
  example database remembers what failed.
- ``mutation``: derandomized as ``ci``, for ``scripts/mutation.py`` (a mutant must
  be killed or survive by the code, not by the draw).

The active profile is printed in the pytest header.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, Verbosity, settings

from kimi_actors.observe import redact, set_logger

settings.register_profile("ci", derandomize=True, print_blob=True, verbosity=Verbosity.normal,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("mutation", parent=settings.get_profile("ci"), database=None)
settings.register_profile("dev", print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")
settings.load_profile(PROFILE)


def pytest_report_header() -> str:
    return f"hypothesis profile: {PROFILE} (derandomize={settings().derandomize})"


@pytest.fixture
def events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event kimi_actors emits while the test runs, as structlog event dicts (after the
    ``redact`` processor), in order."""
    capture = structlog.testing.LogCapture()
    set_logger(structlog.wrap_logger(None, processors=[redact, capture]))
    try:
        yield capture.entries
    finally:
        set_logger(None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``-m "not redis"`` leaves out every test that starts a redis-server: those that take
    the ``redis_server`` fixture here (the docs' Redis examples are marked where defined)."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh redis-server on a free loopback port (see tests/redis_server.py)."""
    from redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
