"""Fixtures for FakeKimi's tests: a started server and a raw aiohttp client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from fake_kimi_helpers import WALL_TIME, Client

from kimi_actors.testing import FakeKimi


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def fake() -> AsyncIterator[FakeKimi]:
    async with FakeKimi(wall_time=lambda: WALL_TIME) as server:
        yield server


@pytest.fixture
def client(session: aiohttp.ClientSession, fake: FakeKimi) -> Client:
    return Client(session, fake)


@pytest.fixture
def make_client(session: aiohttp.ClientSession) -> Callable[[FakeKimi], Client]:
    return lambda server: Client(session, server)
