"""Achieved RPM as a share of the configured limit when the limit binds, and the 429s it cost.

FakeKimi (its own process) enforces ``Limits(rpm=R, minute=W)`` over exact rolling windows;
the Supervisor is given the same limits and sends ``--requests`` short chats through
``sup.map``, far more than one window allows, so the RPM limit is what paces the run.

How the share is measured, and why. Each request is stamped when the runtime hands it to the
transport (the moment the governor admitted it; wrapped in this script only). A rolling-window
limit of R per W allows request ``j + R`` no earlier than one window after request ``j``,
whatever the pattern (a burst per window, an even spacing, anything in between). So the
steady state is measured by the gaps ``t[j + R] - t[j]`` over every ``j``: their mean is how
long the run took to renew a full window of requests, and ``W / mean gap`` is the achieved
share of the limit (100% = exactly R in every window, the most any client can send without a
429 from a rolling-window server). It counts every request except the first window's R as an
end point, and needs no guess about where a burst starts or ends. Whole-run figures such as
``N / T`` are printed for context but are not fair: they count the first window's burst
without its window and swing with how N falls against the window's pattern.

Target: >= 98% with zero 429s (FakeKimi's rejected rpm/tpm/concurrency and the client's
``statistics().rate_limited``). The governor stretches its windows by ``window_margin`` (1.5%
by default) against network jitter, so about 98.5% is the ceiling by design.

    python benchmarks/bench_rpm.py [--rpm 300] [--window 6] [--requests 2000]
                                   [--window-margin M]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from _common import FakeServer, describe, fake_server, percentile, server_spec

from kimi_actors import Limits, Supervisor
from kimi_actors.transport import RawResponse, Transport

MODEL = "moonshot-v1-8k"
TARGET = 0.98


async def run(server: FakeServer, limits: Limits, count: int, window_margin: float | None,
              stamps: list[float]) -> tuple[float, dict[str, Any]]:
    """Send ``count`` chats through ``sup.map``; return the run's wall time and client stats."""
    original = Transport.post

    async def stamped_post(self: Transport, path: str, body: bytes, *,
                           headers: Mapping[str, str] | None = None,
                           on_sent: Callable[[], None] | None = None) -> RawResponse:
        stamps.append(time.perf_counter())
        return await original(self, path, body, headers=headers, on_sent=on_sent)

    Transport.post = stamped_post  # type: ignore[method-assign]
    bodies = ({"model": MODEL, "max_tokens": 8,
               "messages": [{"role": "user", "content": f"rpm question {index}"}]}
              for index in range(count))
    failed = 0
    first_error = ""
    started = time.perf_counter()
    try:
        supervisor = (Supervisor(api_key=server.api_key, base_url=server.base_url,
                                 limits=limits) if window_margin is None else
                      Supervisor(api_key=server.api_key, base_url=server.base_url,
                                 limits=limits, window_margin=window_margin))
        async with supervisor as sup:
            async for item in sup.map(bodies):
                if not item.ok:
                    failed += 1
                    first_error = first_error or describe(item.error)
            stats = sup.statistics()
    finally:
        Transport.post = original  # type: ignore[method-assign]
    elapsed = time.perf_counter() - started
    return elapsed, {"failed": failed, "rate_limited": stats.rate_limited,
                     "retries": stats.retries, "completed": stats.completed,
                     "attempts": stats.attempts, "first_error": first_error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=300, help="the limit R (default 300)")
    parser.add_argument("--window", type=float, default=6.0,
                        help="the length W of a 'minute', seconds (default 6)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests to send; must exceed 2 x R (default 2000)")
    parser.add_argument("--window-margin", type=float, default=None,
                        help="Supervisor(window_margin=...); default: the library's")
    args = parser.parse_args()
    if args.rpm < 1 or args.window <= 0 or args.requests <= 2 * args.rpm:
        parser.error("need --rpm >= 1, --window > 0 and --requests > 2 x --rpm")
    limit, window = args.rpm, args.window
    limits = Limits(rpm=limit, minute=window)
    expected = args.requests / limit * window
    print(f"limit {limit} requests per {window:g} s window (rolling, both sides); "
          f"{args.requests} requests via sup.map; about {expected:.0f} s", flush=True)

    server_stats: dict[str, Any] = {}
    stamps: list[float] = []
    spec = server_spec(limits={"rpm": limit, "minute": window})
    with fake_server(spec, server_stats) as server:
        elapsed, client = asyncio.run(run(server, limits, args.requests, args.window_margin,
                                          stamps))

    stamps.sort()
    gaps = sorted(stamps[j + limit] - stamps[j] for j in range(len(stamps) - limit))
    mean_gap = sum(gaps) / len(gaps)
    share = window / mean_gap
    span = stamps[-1] - stamps[0]
    rejected = server_stats["rejected"]
    server_429 = rejected["rpm"] + rejected["tpm"] + rejected["concurrency"]
    ok = share >= TARGET and server_429 == 0 and client["rate_limited"] == 0
    print(f"  window renewal t[j+{limit}] - t[j] over {len(gaps)} pairs: mean "
          f"{mean_gap:.3f} s, p50 {percentile(gaps, 0.5):.3f} s, p99 "
          f"{percentile(gaps, 0.99):.3f} s, max {gaps[-1]:.3f} s (ideal {window:g} s)")
    print(f"  whole run, for context: {len(stamps)} sends in {span:.2f} s from first to last "
          f"({len(stamps) / span * window:.0f} per window, inflated by the first burst); "
          f"wall {elapsed:.2f} s")
    print(f"  server: accepted {server_stats['accepted']}, peak in any rolling window "
          f"{server_stats['peak_rpm']} (limit {limit}), rejected rpm {rejected['rpm']}, "
          f"tpm {rejected['tpm']}, concurrency {rejected['concurrency']}")
    print(f"  client: completed {client['completed']}, failed {client['failed']}, attempts "
          f"{client['attempts']}, retries {client['retries']}, rate_limited "
          f"{client['rate_limited']}")
    if client["first_error"]:
        print(f"  client: first failure: {client['first_error']}")
    print(f"rpm: achieved {share:.1%} of the limit ({window / mean_gap * limit:.1f} of "
          f"{limit} per window), 429s: server {server_429}, client {client['rate_limited']} "
          f"(target >= {TARGET:.0%} with zero 429s) {'ok' if ok else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
