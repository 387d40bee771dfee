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
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlencode

from aiohttp import web
from browser import browser, chromium, open_page

from kimi_actors.testing import expected_reply

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_backend.py"
#: A generous bound on a loaded two-core machine; never waited out.
ANSWER_WITHIN = 60.0


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_backend_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_page_streams_exactly_the_expected_answer_and_closes_its_source(
        tmp_path: Path) -> None:
    chromium_path = chromium()
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
        async with browser(chromium_path, tmp_path / "profile") as devtools:
            page = await open_page(devtools, url)
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
