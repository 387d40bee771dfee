"""When the server pushes back: overload, 429s that name nothing, and numbered 429s.

Three runs, each against FakeKimi in its own process, each through ``sup.map``:

1. **overload**: FakeKimi answers 429 ``engine_overloaded_error`` past ``--capacity`` (40)
   requests in flight; the client is allowed five times that (200). 1,200 chats, each served
   in ``--service`` seconds, so the capacity allows ``1200 / 40 * service`` seconds at best.
2. **vague**: FakeKimi enforces ``--rpm`` (100) per ``--window`` (2 s) and its 429s name
   nothing ("We're receiving too many requests at the moment"); the client is configured at
   twice that RPM. 1,000 chats.
3. **numbered**: the same with Kimi's usual messages ("max RPM: 100, please try again after
   1 seconds").

Each prints the share answered, the 429s per request by kind, the achieved share of the real
limit and the time taken. The achieved RPM share is measured as in bench_rpm.py: over the
sends the server accepted, ``window / mean(t[j + R] - t[j])`` (100% = exactly R in every
rolling window). For overload, the time the capacity allows divided by the time taken.

Targets (issue "When the server pushes back"): every request answered; overload at most 0.1
overload 429s per request in at most 1.3 times the time the capacity allows; vague 429s at
most 2% of requests, with at least 95% of the real limit achieved.

    python benchmarks/bench_pushback.py [--capacity 40] [--service 0.25] [--rpm 100]
                                        [--window 2] [--only overload|vague|numbered]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from _common import describe, fake_server, server_spec

from kimi_actors import Limits, Supervisor
from kimi_actors.transport import RawResponse, Transport

MODEL = "moonshot-v1-8k"


@dataclass(slots=True)
class Run:
    answered: int
    failed: int
    elapsed: float
    #: (send time, status) of every attempt, seconds since the run started.
    attempts: list[tuple[float, int]]
    stats: Any
    server: dict[str, Any]
    first_error: str


async def _drive(base_url: str, api_key: str, limits: Limits, count: int,
                 attempts: list[tuple[float, int]]) -> tuple[int, int, float, Any, str]:
    original = Transport.post
    started = time.perf_counter()

    async def recorded(self: Transport, path: str, body: bytes, *,
                       headers: Mapping[str, str] | None = None,
                       on_sent: Callable[[], None] | None = None) -> RawResponse:
        sent = time.perf_counter() - started
        raw = await original(self, path, body, headers=headers, on_sent=on_sent)
        attempts.append((sent, raw.status))
        return raw

    Transport.post = recorded  # type: ignore[method-assign]
    bodies = ({"model": MODEL, "max_tokens": 8,
               "messages": [{"role": "user", "content": f"push-back question {index}"}]}
              for index in range(count))
    answered = failed = 0
    first_error = ""
    try:
        async with Supervisor(api_key=api_key, base_url=base_url, limits=limits) as sup:
            async for item in sup.map(bodies):
                if item.ok:
                    answered += 1
                else:
                    failed += 1
                    first_error = first_error or describe(item.error)
            stats = sup.statistics()
    finally:
        Transport.post = original  # type: ignore[method-assign]
    return answered, failed, time.perf_counter() - started, stats, first_error


def run(spec: dict[str, Any], limits: Limits, count: int) -> Run:
    server: dict[str, Any] = {}
    attempts: list[tuple[float, int]] = []
    with fake_server(spec, server) as fake:
        answered, failed, elapsed, stats, first_error = asyncio.run(
            _drive(fake.base_url, fake.api_key, limits, count, attempts))
    return Run(answered=answered, failed=failed, elapsed=elapsed, attempts=attempts,
               stats=stats, server=server, first_error=first_error)


def _report(name: str, result: Run, count: int) -> None:
    rejected = result.server["rejected"]
    print(f"  {name}: answered {result.answered}/{count} ({result.answered / count:.1%}), "
          f"failed {result.failed}, attempts {len(result.attempts)}, "
          f"in {result.elapsed:.2f} s; server rejected "
          f"{ {reason: n for reason, n in rejected.items() if n} }")
    governor = result.stats.governor
    print(f"  {name}: working concurrency {governor.working_concurrency} after "
          f"{governor.concurrency_decreases} decreases, learned RPM {governor.learned_rpm}, "
          f"retries {result.stats.retries}, budget waits {result.stats.budget_waits}")
    if result.first_error:
        print(f"  {name}: first failure: {result.first_error}")


def overload(capacity: int, service: float) -> bool:
    count = 30 * capacity
    spec = server_spec(latency={"first_token": service}, options={"capacity": capacity})
    limits = Limits(concurrency=5 * capacity)
    print(f"overload: capacity {capacity} in flight, client allowed {limits.concurrency}, "
          f"{count} chats of {service:g} s", flush=True)
    result = run(spec, limits, count)
    _report("overload", result, count)
    overloads = result.server["rejected"]["overloaded"]
    ideal = count / capacity * service
    per_request = overloads / count
    ratio = result.elapsed / ideal
    ok = result.answered == count and per_request <= 0.1 and ratio <= 1.3
    print(f"overload: answered {result.answered / count:.1%}, {per_request:.3f} overload 429s "
          f"per request, {ideal / result.elapsed:.1%} of the capacity used, {ratio:.2f} times "
          f"the time it allows ({ideal:.2f} s) (targets: all, <= 0.1, <= 1.3) "
          f"{'ok' if ok else 'MISSED'}", flush=True)
    return ok


def rate(kind: str, rpm: int, window: float) -> bool:
    count = 10 * rpm
    spec = server_spec(limits={"rpm": rpm, "minute": window}, latency={"first_token": 0.05},
                       options={"vague_rate_limits": kind == "vague"})
    limits = Limits(rpm=2 * rpm, concurrency=10, minute=window)
    print(f"{kind}: the server allows {rpm} per {window:g} s, the client is told "
          f"{limits.rpm}; {count} chats", flush=True)
    result = run(spec, limits, count)
    _report(kind, result, count)
    refused = [sent for sent, status in result.attempts if status == 429]
    accepted = sorted(sent for sent, status in result.attempts if status == 200)
    gaps = [accepted[j + rpm] - accepted[j] for j in range(len(accepted) - rpm)]
    share = window / (sum(gaps) / len(gaps)) if gaps else 0.0
    per_request = len(refused) / count
    settled = max(refused) if refused else 0.0
    ok = result.answered == count and (kind != "vague" or (per_request <= 0.02
                                                          and share >= 0.95))
    verdict = f" (targets: all, <= 0.02, >= 95%) {'ok' if ok else 'MISSED'}"
    print(f"{kind}: answered {result.answered / count:.1%}, {per_request:.3f} rate-limit 429s "
          f"per request ({len(refused)}), {share:.1%} of the real limit achieved, last 429 at "
          f"{settled:.1f} s of {result.elapsed:.1f} s{verdict if kind == 'vague' else ''}",
          flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=40)
    parser.add_argument("--service", type=float, default=0.25)
    parser.add_argument("--rpm", type=int, default=100)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--only", choices=["overload", "vague", "numbered"])
    args = parser.parse_args()
    results = [overload(args.capacity, args.service)] if args.only in (None, "overload") else []
    results += [rate(kind, args.rpm, args.window) for kind in ("vague", "numbered")
                if args.only in (None, kind)]
    print("push-back: " + ("every target met" if all(results) else "a target MISSED"))


if __name__ == "__main__":
    main()
