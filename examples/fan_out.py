"""Fan out hundreds of chat requests through one Supervisor, two ways, and print what it did.

``sup.map(bodies)`` takes any iterable (a generator of 100,000 bodies is fine: it keeps a
bounded window of actors) and yields results as they finish, errors included. ``asyncio.gather``
over ``sup.chat(...)`` calls suits a handful of requests whose answers you want in order. Both
share one governor, so the account's limits hold whatever mix of callers runs at once.

By default it runs against an embedded FakeKimi (``--real`` sends to the Kimi API) that
enforces a small account's limits over a 2-second "minute" (so the RPM limit paces the run)
and injects some overloads and 500s, so you can watch retries happen and check every answer
against the fake's deterministic reply.

    python examples/fan_out.py [--real] [--count 300] [--gather 60] [--model M]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from kimi_actors import Limits, Supervisor
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

#: What the embedded FakeKimi enforces, and what the Supervisor is told: the same account.
FAKE_LIMITS = Limits(concurrency=32, rpm=200, tpm=400_000, minute=2.0)
FAKE_FAULTS = Faults(overload=0.03, server_error=0.02)
FAKE_LATENCY = Latency(first_token=0.02)


@asynccontextmanager
async def endpoint(use_fake: bool) -> AsyncIterator[tuple[str | None, str | None, Limits,
                                                          FakeKimi | None]]:
    """(base_url, api_key, limits, fake): an embedded FakeKimi, or the real API from the
    environment (``MOONSHOT_API_KEY``, optional ``MOONSHOT_BASE_URL``, tier-1 limits)."""
    if use_fake:
        async with FakeKimi(limits=FAKE_LIMITS, faults=FAKE_FAULTS, latency=FAKE_LATENCY,
                            seed=7) as fake:
            yield fake.base_url, fake.api_key, FAKE_LIMITS, fake
    else:
        yield None, None, Limits.tier(1), None


def bodies(count: int, model: str, tag: str) -> Iterator[dict[str, Any]]:
    """A lazy stream of request bodies: map() pulls them only as its window has room."""
    for number in range(count):
        yield {"model": model, "max_tokens": 64,
               "messages": [{"role": "user", "content": f"{tag} #{number}: one fact about the "
                                                        f"moon, please"}]}


async def main(args: argparse.Namespace) -> int:
    async with endpoint(not args.real) as (base_url, api_key, limits, fake):
        where = "an embedded FakeKimi" if fake is not None else "the Kimi API"
        print(f"fanning out to {where} with {limits}")
        mismatched = 0
        started = time.perf_counter()
        async with Supervisor(api_key=api_key, base_url=base_url, limits=limits) as sup:
            mapped_ok = mapped_failed = 0
            async for item in sup.map(bodies(args.count, args.model, "map")):
                if item.result is None:
                    mapped_failed += 1
                    print(f"  map #{item.index} failed: {type(item.error).__name__}: "
                          f"{item.error}")
                    continue
                mapped_ok += 1
                if fake is not None:
                    expected = expected_reply(args.model, item.request["messages"],
                                              max_tokens=64)
                    mismatched += item.result.content != expected.content
                if item.index < 3:
                    print(f"  map #{item.index}: {item.result.content[:60]!r}...")
            map_seconds = time.perf_counter() - started

            gather_bodies = list(bodies(args.gather, args.model, "gather"))
            results = await asyncio.gather(*(sup.chat(**body) for body in gather_bodies),
                                           return_exceptions=True)
            gathered_ok = sum(1 for result in results if not isinstance(result, BaseException))
            if fake is not None:
                for body, result in zip(gather_bodies, results, strict=True):
                    if not isinstance(result, BaseException):
                        expected = expected_reply(args.model, body["messages"], max_tokens=64)
                        mismatched += result.content != expected.content
            stats = sup.statistics()

        elapsed = time.perf_counter() - started
        print(f"supervisor: submitted {stats.submitted}, completed {stats.completed}, failed "
              f"{stats.failed}, attempts {stats.attempts}, retries {stats.retries} (overloaded "
              f"{stats.overloaded}, server errors {stats.server_errors}, rate limited "
              f"{stats.rate_limited}), breaker {stats.breaker_state}")
        print(f"tokens: prompt {stats.prompt_tokens}, completion {stats.completion_tokens}; "
              f"reserved at admission {stats.tokens_reserved}, settled {stats.tokens_settled}")
        if fake is not None:
            server = fake.statistics()
            print(f"FakeKimi: accepted {server.accepted}, injected {dict(server.faults)}, "
                  f"peak concurrency {server.peak_concurrency}/{limits.concurrency}, peak rpm "
                  f"{server.peak_rpm}/{limits.rpm}, peak tpm {server.peak_tpm}/{limits.tpm}, "
                  f"rate-limit 429s {sum(dict(server.rejected).values())}; answers that differ "
                  f"from the expected reply: {mismatched}")
        print(f"fan-out: {mapped_ok}/{args.count} via map in {map_seconds:.1f} s, "
              f"{gathered_ok}/{args.gather} via gather, {elapsed:.1f} s in all, "
              f"{stats.retries} retries")
        return 0 if mapped_failed == 0 and gathered_ok == args.gather and mismatched == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help="send to the real Kimi API (billed): needs MOONSHOT_API_KEY, "
                             "and MOONSHOT_BASE_URL for another endpoint; without it the "
                             "embedded FakeKimi answers")
    parser.add_argument("--count", type=int, default=300, help="requests sent through map")
    parser.add_argument("--gather", type=int, default=60,
                        help="requests sent through asyncio.gather")
    parser.add_argument("--model", default="kimi-k2.6")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
