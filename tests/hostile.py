"""Small hostile servers on loopback, for behaviour FakeKimi is too faithful to show.

``serve`` runs an aiohttp app whose routes the test writes; ``raw_server`` runs a bare asyncio
server for bytes no HTTP framework would send. Both listen on 127.0.0.1 only and stop when the
block ends. The rendering helpers write Kimi's wire format by hand, independent of the client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

MODEL = "kimi-k2.6"
QUESTION = [{"role": "user", "content": "Say something about rate limits."}]
CHAT = "/v1/chat/completions"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler | None = None, *,
                routes: Mapping[tuple[str, str], Handler] | None = None) -> AsyncIterator[str]:
    """An aiohttp server on loopback; ``handler`` answers POST /v1/chat/completions, and
    ``routes`` maps (method, path) to more handlers. Yields the base URL (ending in /v1)."""
    app = web.Application()
    if handler is not None:
        app.router.add_post(CHAT, handler)
    for (method, path), route in (routes or {}).items():
        app.router.add_route(method, path, route)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(
        respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> AsyncIterator[str]:
    """A bare TCP server on loopback: ``respond`` reads the request and writes any bytes."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """The request line, headers and body of one HTTP/1.1 request."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *header_lines = head[:-4].split(b"\r\n")
    headers = {}
    for header in header_lines:
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


def chunk(content: str = "", *, role: str | None = None, finish: str | None = None,
          usage: Mapping[str, Any] | None = None, index: int = 0) -> bytes:
    """One ``data:`` event of a chat.completion.chunk, as Kimi writes it."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content:
        delta["content"] = content
    choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
    if usage is not None:
        choice["usage"] = dict(usage)
    body = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1,
            "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def completion(content: str, *, usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole chat.completion body."""
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": dict(usage) if usage is not None else
            {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


async def start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


def partial_prefix(body: Mapping[str, Any]) -> str | None:
    """The Partial Mode prefix a request carries, or None."""
    last = body["messages"][-1]
    if last.get("role") == "assistant" and last.get("partial"):
        return str(last.get("content") or "")
    return None
