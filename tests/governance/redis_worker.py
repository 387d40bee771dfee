"""One process of an account for tests/governance/test_redis_processes.py.

    python redis_worker.py '{"redis": URL, "base_url": URL, "api_key": KEY, "limits": {...},
                             "requests": N, "prefix": "w1", "hold": 0}'

Sends ``requests`` chat requests through a Supervisor that shares the account through Redis,
checks every answer against FakeKimi's expected reply, and prints one JSON line: the answers,
the errors, the 429s the supervisor saw and when each answer came. It prints ``ready`` first
and starts when a line arrives on stdin. With ``hold`` it opens that many slow streams
instead, prints ``held`` once each has a delta, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from kimi_actors import Limits, RedisConfig, Supervisor
from kimi_actors.testing import expected_reply


async def main(spec: dict[str, Any]) -> None:
    limits = Limits(**spec["limits"])
    config = RedisConfig(url=spec["redis"], lease=spec.get("lease", 6.0))
    async with Supervisor(api_key=spec["api_key"], base_url=spec["base_url"], limits=limits,
                          redis=config, window_margin=spec.get("margin", 0.015)) as sup:
        if spec.get("hold"):
            await hold(sup, spec["hold"])
            return
        # Ready, then wait for the test's "go": every worker starts its load at once.
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        answered: list[float] = []
        wrong: list[str] = []
        errors: dict[str, int] = {}

        async def one(number: int) -> None:
            messages = [{"role": "user", "content": f"{spec['prefix']} request {number}"}]
            try:
                result = await sup.chat(model="moonshot-v1-8k", messages=messages,
                                        max_tokens=16)
            except Exception as exc:  # every failure is reported, by type
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            answered.append(time.monotonic())
            if result.content != expected_reply("moonshot-v1-8k", messages,
                                                max_tokens=16).content:
                wrong.append(f"{spec['prefix']}-{number}")

        async with asyncio.TaskGroup() as group:
            for number in range(spec["requests"]):
                group.create_task(one(number))
        stats = sup.statistics()
        shared = stats.governor.shared
        assert shared is not None  # a Redis governor
        print(json.dumps({"answered": len(answered), "wrong": wrong, "errors": errors,
                          "rate_limited": stats.rate_limited,
                          "times": answered,
                          "round_trips": shared.round_trips}), flush=True)


async def hold(sup: Supervisor, count: int) -> None:
    async with contextlib.AsyncExitStack() as streams:
        for number in range(count):
            stream = await streams.enter_async_context(sup.stream(
                model="moonshot-v1-8k", max_tokens=500,
                messages=[{"role": "user", "content": f"hold {number}"}]))
            await anext(stream)
        print("held", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
