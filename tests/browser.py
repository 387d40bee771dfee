"""Headless Chromium driven over the Chrome DevTools Protocol, for tests of pages.

Debian's chromium package (CI installs it); the protocol spoken with aiohttp's websocket
client, so no browser-automation dependency. Without Chromium a test skips, except under
CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

#: Generous bounds for a cold browser start on a loaded two-core machine; never waited out.
START_WITHIN = 60.0


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("the browser test needs Chromium under CI (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


class DevTools:
    """A minimal Chrome DevTools Protocol client: one call at a time, events ignored."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._socket.send_json(message)
        while True:
            reply = await self._socket.receive_json()
            if reply.get("id") == number:
                assert "error" not in reply, reply
                return reply["result"]

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", session, expression=expression,
                                 returnByValue=True)
        return result["result"].get("value")


@asynccontextmanager
async def browser(chromium: str, profile: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    try:
        address = None
        async with asyncio.timeout(START_WITHIN):
            while address is None:
                line = (await process.stderr.readline()).decode()
                assert line, "Chromium exited before it listened"
                found = re.search(r"DevTools listening on (ws://\S+)", line)
                address = found.group(1) if found else None
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(address, max_msg_size=0) as socket:
            yield DevTools(socket)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()




async def open_page(devtools: DevTools, url: str) -> str:
    """Open ``url`` in a new tab; returns the session that drives it."""
    target = await devtools.call("Target.createTarget", url=url)
    attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"],
                                   flatten=True)
    session: str = attached["sessionId"]
    return session


async def screenshot(devtools: DevTools, session: str) -> bytes:
    """The page as a PNG."""
    shot = await devtools.call("Page.captureScreenshot", session, format="png",
                               captureBeyondViewport=True)
    return base64.b64decode(shot["data"])
