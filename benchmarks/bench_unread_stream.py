"""Memory an open stream holds when its consumer stops reading, per buffer size.

A flooding server (this file run with ``--serve``, in its own process) writes 200,000
one-token events per stream as fast as the socket takes them and reports how many streams
asyncio has paused for writing (the kernel's buffers are full: the client stopped reading). The
client opens ``--streams`` streams, takes one delta from each, waits until the server reports
every one pushed back, then measures the Python memory held (``tracemalloc``, started before
the streams opened) and the deltas buffered. Nothing here sleeps for synchronisation: the
client polls the server's report.

    python benchmarks/bench_unread_stream.py [--streams 10] [--buffers 64,512,4096]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tracemalloc

import aiohttp
from aiohttp import web

from kimi_actors import Supervisor

EVENTS = 200_000
PER_WRITE = 500


def _event(content: str, role: str | None = None) -> bytes:
    delta: dict[str, str] = {"content": content}
    if role:
        delta["role"] = role
    body = {"id": "chatcmpl-flood", "object": "chat.completion.chunk", "created": 1,
            "model": "kimi-k2.6", "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _serve() -> None:
    floods: dict[int, web.Request] = {}
    piece = _event("x", "assistant") + b"".join(_event("x") for _ in range(PER_WRITE - 1))

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        floods[id(request)] = request
        try:
            for _ in range(EVENTS // PER_WRITE):
                await response.write(piece)
            await response.write(b"data: [DONE]\n\n")
        finally:
            floods.pop(id(request), None)
        return response

    async def status(request: web.Request) -> web.Response:
        # asyncio paused this connection's writing: the kernel's buffers are full.
        paused = sum(1 for flooding in floods.values()
                     if flooding.protocol is not None and flooding.protocol.writing_paused)
        return web.json_response({"pushed_back": paused})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flood)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


async def _pushed_back(session: aiohttp.ClientSession, root: str) -> int:
    async with session.get(f"{root}/status") as response:
        return int((await response.json())["pushed_back"])


async def _measure(root: str, streams: int, buffer: int) -> tuple[float, int]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    async with aiohttp.ClientSession() as session, \
            Supervisor(api_key="sk-bench-unread", base_url=f"{root}/v1",
                       stream_buffer=buffer) as sup, \
            contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(
            sup.stream(model="kimi-k2.6", messages=[{"role": "user", "content": "flood"}]))
            for _ in range(streams)]
        for stream in opened:
            await anext(stream)
        async with asyncio.timeout(60):
            while await _pushed_back(session, root) < streams:  # noqa: ASYNC110 - a poll
                await asyncio.sleep(0.05)  # of the server's report, which has no event
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        buffered = max(stream.buffered for stream in opened)
    tracemalloc.stop()
    return held / streams / 1e6, buffered


async def _client(root: str, streams: int, buffers: list[int]) -> None:
    print(f"{streams} unread streams, each offered {EVENTS:,} events; memory per stream")
    print(f"{'buffer (deltas)':>16} {'MB per stream':>14} {'most buffered':>14}")
    for buffer in buffers:
        per_stream, buffered = await _measure(root, streams, buffer)
        print(f"{buffer:>16,} {per_stream:>14.2f} {buffered:>14,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--buffers", default="64,512,4096")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"the flood server did not start: {line!r}")
        asyncio.run(_client(line.split()[1], args.streams,
                            [int(b) for b in args.buffers.split(",")]))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)


if __name__ == "__main__":
    main()
