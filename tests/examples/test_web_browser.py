"""The web example's page in a real browser.

Headless Chromium (Debian's package; CI installs it) loads the page of examples/web_backend.py,
which streams an answer over SSE from the app's one Supervisor and its embedded FakeKimi
(dropping a fifth of the streams, so resumes happen). The page must show exactly the expected
reply, say it finished, and have closed its EventSource, so the browser cannot reconnect and
ask again. The browser is driven over the Chrome DevTools Protocol with aiohttp's websocket
client: no browser-automation dependency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from kimi_actors.testing import expected_reply

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_backend.py"
#: Generous bounds for a cold browser start on a loaded two-core machine; never waited out.
START_WITHIN = 60.0
ANSWER_WITHIN = 60.0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("the browser test needs Chromium under CI (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_backend_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


async def test_the_page_streams_exactly_the_expected_answer_and_closes_its_source(
        tmp_path: Path) -> None:
    chromium = _chromium()
    example = _example()
    app = example.build_app(True)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        question = "what does the browser see? 你好"
        url = f"http://127.0.0.1:{port}/?" + urlencode({"user": "alice", "q": question})
        async with browser(chromium, tmp_path / "profile") as devtools:
            target = await devtools.call("Target.createTarget", url=url)
            attached = await devtools.call("Target.attachToTarget",
                                           targetId=target["targetId"], flatten=True)
            page = attached["sessionId"]
            status = ""
            async with asyncio.timeout(ANSWER_WITHIN):
                while not status.endswith("(done)"):
                    status = await devtools.evaluate(
                        page, "document.getElementById('status').textContent") or ""
                    await asyncio.sleep(0.05)  # the page exposes no event to the test
            shown = await devtools.evaluate(page, "document.getElementById('answer').textContent")
            ready_state = await devtools.evaluate(page, "source.readyState")
        stats = app[example.SUPERVISOR].statistics()
    finally:
        await runner.cleanup()
    expected = expected_reply(example.MODEL, example._messages(question),
                              max_tokens=example.MAX_TOKENS)
    assert shown == expected.content
    assert status == f"finished: {expected.finish_reason} (done)"
    assert ready_state == 2  # EventSource.CLOSED: no reconnect, no second billed call
    assert stats.submitted == 1
    assert stats.governor.tenants["alice"].admitted >= 1
