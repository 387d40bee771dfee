"""Issue 15's figures in one run: the runtime against a hand-written aiohttp loop.

* chat and stream CPU per call: bench_overhead.py's phases, with chat under tier 5's limits
  and the transport alone (``--quick`` skips them);
* at ``--streams`` concurrent streams, this process's CPU per delta (user and system time,
  after a first round that is not counted), and the delay from the server's send to the
  consumer's delta (medians over ``--rounds`` alternating rounds, and the median of each
  round's CPU ratio to its neighbour; other load on the machine moves single rounds by a
  third). A stamping SSE server (this file run
  as ``--serve``, in its own process) sends ``time.monotonic()`` as every token's content,
  and both clients subtract it from their own ``time.monotonic()`` when the delta reaches
  the consumer. Both processes read the same
  CLOCK_MONOTONIC. Each stream starts at a random phase of the token period, so the streams
  do not tick in lockstep, and the runtime has no slow start, so both clients carry the same
  load. Each round prints how busy the client was (CPU over wall time): near 100%, delays
  are queueing. The default, a token every 50 ms (20,000 deltas a second), is a load both
  clients carry on a 2-core machine; at 20 ms (50,000 a second) neither does, and the
  delays only grow with the round;
* memory per idle open stream, and per request queued behind a full concurrency limit,
  from ``tracemalloc`` around opening them, for the runtime and for the bare loop;
* import time of ``kimi_actors`` against ``aiohttp`` alone, and ``kimi-actors --help``
  against ``python -c pass``, medians of fresh interpreters.

Ratios are runtime / bare. Targets (issue 15): chat <= 1.3, stream <= 1.2 (at 1,000 streams),
p99 delay <= 1.5. bench_overhead's stream phase (50-token streams with no latency, read in one
or two network reads) measures the per-call costs of a stream instead.

    python benchmarks/bench_vs_bare.py [--streams 1000] [--tokens 100] [--per-token 0.05]
                                       [--idle 500] [--rounds 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from _common import median, percentile
from aiohttp import web

from kimi_actors import AdaptPolicy, Limits, Supervisor

MODEL = "kimi-k2.6"
KEY = "sk-bench-vs-bare-0000000000"
HERE = os.path.abspath(__file__)


# -- the stamping server (child process) -----------------------------------------------------

def _chunk(number: int, content: str, *, finish: str | None = None) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": content} if number else
                         {"role": "assistant", "content": content},
                         "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _serve(tokens: int, per_token: float) -> None:
    phases = random.Random(15)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        idle = body.get("user") == "idle"
        if not idle:
            # Streams opened together would otherwise tick in lockstep: every stream's token
            # in the same millisecond, a burst the client drains in a queue. Real traffic is
            # spread; a random phase spreads it the same way for both clients.
            await asyncio.sleep(phases.random() * per_token)
        for number in range(tokens):
            await response.write(_chunk(number, repr(time.monotonic())))
            if idle:
                await asyncio.sleep(3600)  # held open until the client leaves
            await asyncio.sleep(per_token)
        await response.write(_chunk(tokens, "", finish="stop") + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}/v1", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


@asynccontextmanager
async def stamping_server(tokens: int, per_token: float) -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, HERE, "--serve", "--tokens", str(tokens),
        "--per-token", str(per_token), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        line = (await process.stdout.readline()).decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"the stamping server did not start: {line!r}")
        yield line.split()[1]
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# -- the two clients -------------------------------------------------------------------------

def _body(idle: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    if idle:
        body["user"] = "idle"
    return body


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


async def bare_stream(session: aiohttp.ClientSession, url: str, delays: list[float],
                      opened: asyncio.Event | None = None) -> None:
    payload = json.dumps({**_body(opened is not None), "stream": True}).encode()
    async with session.post(f"{url}/chat/completions", data=payload) as response:
        buffer = b""
        while data := await response.content.readany():
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                chunk = json.loads(event[6:])
                content = chunk["choices"][0]["delta"].get("content")
                if not content:
                    continue  # the finish chunk: the runtime's consumer skips it too
                delays.append(time.monotonic() - float(content))
                if opened is not None:
                    opened.set()
                    await asyncio.sleep(3600)


async def runtime_stream(sup: Supervisor, delays: list[float],
                         opened: asyncio.Event | None = None) -> None:
    async with sup.stream(**_body(opened is not None)) as stream:
        async for delta in stream:
            if delta.content:
                delays.append(time.monotonic() - float(delta.content))
                if opened is not None:
                    opened.set()
                    await asyncio.sleep(3600)


def _supervisor(url: str) -> Supervisor:
    """No limits, and no slow start: the runtime opens every stream at once, as the bare loop
    does (the default ramp, 32 streams doubling every 0.5 s, would measure another load)."""
    return Supervisor(api_key=KEY, base_url=url, limits=Limits(), adapt=AdaptPolicy(start=None))


async def delays_of(streams: int, url: str, runtime: bool) -> list[float]:
    delays: list[float] = []
    if runtime:
        async with _supervisor(url) as sup:
            await asyncio.gather(*(runtime_stream(sup, delays) for _ in range(streams)))
    else:
        async with _session() as session:
            await asyncio.gather(*(bare_stream(session, url, delays) for _ in range(streams)))
    return sorted(delays)


async def _memory(count: int, open_all: Callable[[], Awaitable[list[asyncio.Task[Any]]]],
                  ) -> float:
    """Bytes allocated per item while ``count`` items are held open."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = await open_all()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (held - before) / count


async def idle_memory(count: int, url: str, runtime: bool) -> float:
    delays: list[float] = []
    if runtime:
        async with _supervisor(url) as sup:
            async def open_runtime() -> list[asyncio.Task[Any]]:
                events = [asyncio.Event() for _ in range(count)]
                tasks = [asyncio.ensure_future(runtime_stream(sup, delays, event))
                         for event in events]
                await asyncio.gather(*(event.wait() for event in events))
                return tasks

            return await _memory(count, open_runtime)
    async with _session() as session:
        async def open_bare() -> list[asyncio.Task[Any]]:
            events = [asyncio.Event() for _ in range(count)]
            tasks = [asyncio.ensure_future(bare_stream(session, url, delays, event))
                     for event in events]
            await asyncio.gather(*(event.wait() for event in events))
            return tasks

        return await _memory(count, open_bare)


async def queued_memory(count: int, url: str) -> float:
    """Per request waiting for admission behind one idle stream (concurrency 1)."""
    async with Supervisor(api_key=KEY, base_url=url, limits=Limits(concurrency=1)) as sup:
        opened = asyncio.Event()
        holder = asyncio.ensure_future(runtime_stream(sup, [], opened))
        await opened.wait()

        async def open_queued() -> list[asyncio.Task[Any]]:
            tasks = [asyncio.ensure_future(sup.chat(**_body())) for _ in range(count)]
            while sup.statistics().queued < count:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
            return tasks

        per = await _memory(count, open_queued)
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        return per


def startup(command: list[str], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[runs // 2]


def main(args: argparse.Namespace) -> None:
    if not args.quick:
        print("== CPU per request (bench_overhead.py, its own process)", flush=True)
        overhead = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(HERE), "bench_overhead.py"),
             "--tier", "5", "--transport"], capture_output=True, text=True,
            check=True)
        for line in overhead.stdout.splitlines():
            if line.startswith("overhead"):
                print(line, flush=True)
    asyncio.run(streams_and_memory(args))
    python = sys.executable
    base = startup([python, "-c", "pass"])
    aiohttp_import = startup([python, "-c", "import aiohttp"])
    ours = startup([python, "-c", "import kimi_actors"])
    cli = startup([python, "-m", "kimi_actors", "--help"])
    print(f"import kimi_actors: {(ours - base) * 1000:.0f} ms (aiohttp alone "
          f"{(aiohttp_import - base) * 1000:.0f} ms); kimi-actors --help: "
          f"{cli * 1000:.0f} ms (python -c pass: {base * 1000:.0f} ms)", flush=True)


async def streams_and_memory(args: argparse.Namespace) -> None:
    print(f"== delay from the server's send to the consumer, {args.streams} streams of "
          f"{args.tokens} tokens every {args.per_token * 1000:.0f} ms", flush=True)
    async with stamping_server(args.tokens, args.per_token) as url:
        # The first round after the server starts spends up to three times the system time
        # of the later ones (fresh sockets and pages), whichever client runs it: not counted.
        await delays_of(args.streams, url, runtime=False)
        figures: dict[str, list[tuple[float, float, float, float, float]]] = {}
        for number in range(args.rounds):
            for runtime in (False, True) if number % 2 == 0 else (True, False):
                name = "runtime" if runtime else "bare"
                gc.collect()
                times, wall = os.times(), time.perf_counter()
                delays = await delays_of(args.streams, url, runtime)
                after, wall = os.times(), time.perf_counter() - wall
                user = (after.user - times.user) / len(delays) * 1e6
                system = (after.system - times.system) / len(delays) * 1e6
                p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
                figures.setdefault(name, []).append((user + system, p50, p99, user, system))
                # Near 100% busy the client cannot keep up and delays are queueing.
                print(f"  round {number + 1} {name}: CPU {user + system:.1f} µs/delta "
                      f"({user:.1f} user), p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                      f"over {len(delays):,} deltas, {len(delays) / wall:,.0f} deltas/s, "
                      f"{(after.user + after.system - times.user - times.system) / wall:.0%} "
                      f"busy", flush=True)

        def med(name: str, field: int) -> float:
            return median([round_[field] for round_ in figures[name]])

        # Each round's ratio to the other client's round next to it: the machine's speed
        # drifts within a run, and the pairs cancel most of it.
        pairs = [runtime[0] / bare[0]
                 for runtime, bare in zip(figures["runtime"], figures["bare"], strict=True)]
        cpu_ratio = med("runtime", 0) / med("bare", 0)
        print(f"stream CPU at {args.streams} streams: runtime {med('runtime', 0):.1f} "
              f"µs/delta ({med('runtime', 3):.1f} user), bare {med('bare', 0):.1f} µs/delta "
              f"({med('bare', 3):.1f} user), ratio {cpu_ratio:.2f}, median of the rounds' "
              f"ratios {median(pairs):.2f} (target <= 1.2)", flush=True)
        print(f"p50 delay: runtime {med('runtime', 1) * 1000:.1f} ms, bare "
              f"{med('bare', 1) * 1000:.1f} ms, ratio {med('runtime', 1) / med('bare', 1):.2f}",
              flush=True)
        # The p99 moves most with the machine (a pause of a few ms anywhere on it lands in the
        # top 1%): each round's ratio to its neighbour is shown too.
        p99_pairs = [runtime[2] / bare[2]
                     for runtime, bare in zip(figures["runtime"], figures["bare"], strict=True)]
        print(f"p99 delay: runtime {med('runtime', 2) * 1000:.1f} ms, bare "
              f"{med('bare', 2) * 1000:.1f} ms, ratio {med('runtime', 2) / med('bare', 2):.2f}, "
              f"rounds' ratios {min(p99_pairs):.2f}-{max(p99_pairs):.2f} (median "
              f"{median(p99_pairs):.2f}) (target <= 1.5)", flush=True)
        print(f"== memory ({args.idle} idle open streams; {args.idle} queued requests)",
              flush=True)
        bare_idle = await idle_memory(args.idle, url, runtime=False)
        runtime_idle = await idle_memory(args.idle, url, runtime=True)
        queued = await queued_memory(args.idle, url)
        print(f"memory per idle open stream: runtime {runtime_idle / 1024:.1f} KiB, bare "
              f"{bare_idle / 1024:.1f} KiB, ratio {runtime_idle / bare_idle:.2f}", flush=True)
        print(f"memory per queued request: {queued / 1024:.1f} KiB", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--per-token", type=float, default=0.05,
                        help="seconds between tokens; at 0.02 neither client keeps up on 2 cores")
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating bare and runtime rounds of the streams phase")
    parser.add_argument("--quick", action="store_true",
                        help="skip the CPU phases (bench_overhead.py)")
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(_serve(arguments.tokens, arguments.per_token))
    else:
        main(arguments)
