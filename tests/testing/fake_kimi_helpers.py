"""Helpers for FakeKimi's tests: a raw aiohttp client (not the library's runtime) and
readers of what came over the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kimi_actors.testing import FakeKimi

WALL_TIME = 1_700_000_000


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The ``data:`` payloads of an SSE body, JSON-decoded (``[DONE]`` kept as a str)."""
        return sse_events(self.body)


def sse_events(body: bytes) -> list[Any]:
    events: list[Any] = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        assert block.startswith(b"data: "), block
        payload = block[len(b"data: "):].decode()
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def chat_body(content: str = "hello", *, model: str = "moonshot-v1-8k", **fields: Any
              ) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


class Client:
    """Speaks HTTP to one FakeKimi with a plain aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, fake: FakeKimi) -> None:
        self.session = session
        self.fake = fake

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fake.api_key}"}

    async def post(self, path: str, body: Any = None, *, data: bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> Answer:
        payload = data if data is not None else json.dumps(body).encode()
        async with self.session.post(f"{self.fake.base_url}{path}", data=payload,
                                     headers=self.auth if headers is None else headers
                                     ) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    async def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> Answer:
        url = (self.fake.base_url.removesuffix("/v1") + path if path.startswith("/_fake")
               else f"{self.fake.base_url}{path}")
        async with self.session.get(url, headers=self.auth if headers is None else headers
                                    ) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    async def chat(self, body: Any, **kwargs: Any) -> Answer:
        return await self.post("/chat/completions", body, **kwargs)


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``condition`` holds, checking between loop turns; fail after ``within`` s."""
    step = 0.002
    for _ in range(int(within / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition still false after {within} s")
