"""Client CPU per request of the openai SDK on its own transport and on the supervisor's.

FakeKimi runs in its own process with no limits, faults or latency, so only the client is
measured (``time.process_time()`` of this process). The same ``--requests`` bodies go from
``--concurrency`` workers through each of:

* bare: a hand-written aiohttp loop (bench_overhead.py's), the floor any client pays;
* sup.chat: ``Supervisor.chat`` / ``Supervisor.stream``;
* sdk: ``openai.AsyncOpenAI`` on its own httpx transport, ``max_retries=0``, no limiter;
* sdk on sup: ``sup.openai_client()``, the same SDK calls through the supervisor.

Each round runs every client once, in a rotated order; the figures are medians over rounds,
with each client's ratio to the bare loop and the SDK-on-sup's ratio to the SDK alone. The
SDK's own transport applies no limits, retries under no budget and cannot resume a stream,
so it is a lower bound for what the SDK costs, not a like-for-like runtime.

    python benchmarks/bench_openai_sdk.py [--requests 1000] [--concurrency 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from _common import FakeServer, fake_server, median, server_spec
from bench_overhead import (
    Phase,
    _workers,
    bare_chat,
    bare_stream,
    make_bodies,
    measure,
    runtime_chat,
    runtime_stream,
)

from kimi_actors import Limits, Supervisor

Runner = Callable[[FakeServer, list[dict[str, Any]], int], Awaitable[int]]


async def _sdk_calls(client: openai.AsyncOpenAI, bodies: list[dict[str, Any]],
                     concurrency: int, stream: bool) -> int:
    async def one(body: dict[str, Any]) -> int:
        if not stream:
            completion = await client.chat.completions.create(**body)
            return len(completion.choices[0].message.content or "")
        characters = 0
        async for chunk in await client.chat.completions.create(**body, stream=True):
            if chunk.choices:
                characters += len(chunk.choices[0].delta.content or "")
        return characters

    return await _workers(concurrency, bodies, one)


def _sdk_alone(server: FakeServer) -> openai.AsyncOpenAI:
    # As many connections as the workers: the SDK's default pool (1,000) never binds here.
    return openai.AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=0)


async def sdk_chat(server: FakeServer, bodies: list[dict[str, Any]], concurrency: int) -> int:
    async with _sdk_alone(server) as client:
        return await _sdk_calls(client, bodies, concurrency, stream=False)


async def sdk_stream(server: FakeServer, bodies: list[dict[str, Any]], concurrency: int) -> int:
    async with _sdk_alone(server) as client:
        return await _sdk_calls(client, bodies, concurrency, stream=True)


async def _on_sup(server: FakeServer, bodies: list[dict[str, Any]], concurrency: int,
                  stream: bool) -> int:
    async with Supervisor(api_key=server.api_key, base_url=server.base_url,
                          limits=Limits()) as sup, sup.openai_client() as client:
        return await _sdk_calls(client, bodies, concurrency, stream=stream)


async def sdk_on_sup_chat(server: FakeServer, bodies: list[dict[str, Any]],
                          concurrency: int) -> int:
    return await _on_sup(server, bodies, concurrency, stream=False)


async def sdk_on_sup_stream(server: FakeServer, bodies: list[dict[str, Any]],
                            concurrency: int) -> int:
    return await _on_sup(server, bodies, concurrency, stream=True)


async def compare(label: str, runners: dict[str, Runner], server: FakeServer,
                  args: argparse.Namespace) -> None:
    bodies = make_bodies(args.requests, args.max_tokens, label)
    warm = bodies[: max(args.concurrency, len(bodies) // 10)]
    for run in runners.values():
        await measure(run, server, warm, args.concurrency)
    phases: dict[str, list[Phase]] = {name: [] for name in runners}
    names = list(runners)
    for number in range(args.rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        characters = set()
        for name in order:
            phase = await measure(runners[name], server, bodies, args.concurrency)
            phases[name].append(phase)
            characters.add(phase.characters)
        if len(characters) != 1:
            raise RuntimeError(f"{label}: the clients received different text: {characters}")
        print(f"  {label} round {number + 1}: " + ", ".join(
            f"{name} {phases[name][-1].cpu_us_per_request:.0f}" for name in names) + " µs/req",
            flush=True)
    cpu = {name: median([p.cpu_us_per_request for p in phases[name]]) for name in names}
    bare = cpu["bare"]
    print(f"openai sdk ({label}), CPU per request (median of {args.rounds} rounds): " + ", ".join(
        f"{name} {cpu[name]:.0f} µs ({cpu[name] / bare:.2f}x bare)" for name in names), flush=True)
    print(f"  {label}: the SDK on the supervisor costs {cpu['sdk on sup'] / cpu['sdk']:.2f}x "
          f"the SDK alone and {cpu['sdk on sup'] / cpu['sup.chat']:.2f}x sup.chat; the SDK's "
          f"own share of sdk-on-sup is about "
          f"{max(0.0, cpu['sdk on sup'] - cpu['sup.chat']):.0f} µs", flush=True)


async def main(args: argparse.Namespace) -> None:
    with fake_server(server_spec()) as server:
        print(f"FakeKimi in process {server.pid}; {args.requests} requests x {args.rounds} "
              f"rounds, {args.concurrency} workers, max_tokens {args.max_tokens}", flush=True)
        await compare("chat", {"bare": bare_chat, "sup.chat": runtime_chat, "sdk": sdk_chat,
                               "sdk on sup": sdk_on_sup_chat}, server, args)
        await compare("stream", {"bare": bare_stream, "sup.chat": runtime_stream,
                                 "sdk": sdk_stream, "sdk on sup": sdk_on_sup_stream},
                      server, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
