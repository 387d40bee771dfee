"""Choose the limits the governor enforces: tier presets, overrides, short windows, and what
the governor does when the server says the account's real limit is lower.

Kimi's limits are per account and depend on its recharge tier: ``Limits.tier(n)`` gives the
published ones. ``with_overrides(...)`` adjusts one dimension (say, keep half the concurrency
for another process of the same account). The ``minute`` (and ``day``) of a Limits is its
window length, so the same code runs a tier-0 account's "minute" in one second against
FakeKimi. Finally, when the configured limit is higher than the account's, the first 429
("max RPM: 3") names the real limit and the governor adopts it for everyone.

The requests always go to an embedded FakeKimi enforcing tier 0 over ``--window`` seconds,
never to the real API: sending requests just to hit limits would spend your quota.

    python examples/tier_tuning.py [--window 1.0] [--requests 9]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from kimi_actors import TIERS, GovernorStats, Limits, Supervisor
from kimi_actors.testing import FakeKimi

MODEL = "moonshot-v1-8k"


def show_table() -> None:
    print("Kimi tiers (Limits.tier(n)):")
    print(f"  {'tier':>4} {'concurrency':>11} {'RPM':>7} {'TPM':>11} {'TPD':>11}")
    for tier in sorted(TIERS):
        limits = Limits.tier(tier)
        tpd = f"{limits.tpd:,}" if limits.tpd is not None else "unlimited"
        print(f"  {tier:>4} {limits.concurrency:>11,} {limits.rpm:>7,} {limits.tpm:>11,} "
              f"{tpd:>11}")


def show_overrides(window: float) -> None:
    shared = Limits.tier(3).with_overrides(concurrency=100, tpm=1_500_000)
    print("Overrides: two processes sharing a tier-3 account, each taking half of concurrency "
          "and TPM:")
    print(f"  Limits.tier(3).with_overrides(concurrency=100, tpm=1_500_000) -> {shared}")
    short = Limits.tier(0, minute=window, day=window * 1440)
    print(f"Short windows for tests and demos: Limits.tier(0, minute={window:g}) -> {short}")


def governor_line(label: str, governor: GovernorStats) -> str:
    dims = ", ".join(f"{name} {dim.used}/{dim.limit if dim.limit is not None else '-'}"
                     + (f" (paused {dim.paused_for:.1f} s)" if dim.paused_for > 0 else "")
                     for name, dim in governor.dimensions.items())
    return (f"  {label}: admitted {governor.admitted}, queued {governor.queued}, in flight "
            f"{governor.in_flight}; {dims}; limit adjustments {governor.limit_adjustments}")


async def paced(base_url: str, api_key: str, limits: Limits, count: int) -> tuple[int, float]:
    """Send ``count`` requests under ``limits``; print the governor as it paces them."""
    async with Supervisor(api_key=api_key, base_url=base_url, limits=limits) as sup:
        started = time.perf_counter()
        questions = [f"paced question {number}" for number in range(count)]
        every = max(1, limits.rpm or 1)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(sup.chat(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": question}]))
                for question in questions]
            for done, finished in enumerate(asyncio.as_completed(tasks), start=1):
                await finished
                if done % every == 1 and done < count:
                    elapsed = time.perf_counter() - started
                    print(governor_line(f"after {done} answer(s), {elapsed:.1f} s",
                                        sup.statistics().governor))
        stats = sup.statistics()
        print(governor_line("at the end", stats.governor))
        return stats.rate_limited, time.perf_counter() - started


async def adopted(base_url: str, api_key: str, window: float, server_rpm: int) -> int | None:
    """Configure more RPM than the server allows; return the RPM the governor ends with."""
    believed = Limits(rpm=server_rpm * 4, minute=window)
    async with Supervisor(api_key=api_key, base_url=base_url, limits=believed) as sup:
        bodies = [{"model": MODEL, "max_tokens": 8,
                   "messages": [{"role": "user", "content": f"eager question {number}"}]}
                  for number in range(server_rpm * 2)]
        results = [item async for item in sup.map(bodies)]
        stats = sup.statistics()
        print(governor_line(f"configured rpm {believed.rpm}, server allows {server_rpm}",
                            stats.governor))
        print(f"  {sum(item.ok for item in results)}/{len(results)} answered, "
              f"{stats.rate_limited} rate-limit 429s on the way")
        return stats.governor.dimensions["rpm"].limit


async def main(args: argparse.Namespace) -> int:
    show_table()
    show_overrides(args.window)
    tier0 = Limits.tier(0, minute=args.window, day=args.window * 1440)
    async with FakeKimi(limits=tier0) as fake:
        print(f"\nPacing {args.requests} requests under tier 0 ({tier0.rpm} RPM, concurrency "
              f"{tier0.concurrency}) with a {args.window:g} s minute, FakeKimi enforcing the "
              f"same:")
        rate_limited, seconds = await paced(fake.base_url, fake.api_key, tier0, args.requests)
        server = fake.statistics()
        print(f"  FakeKimi: peak rpm {server.peak_rpm}/{tier0.rpm}, peak concurrency "
              f"{server.peak_concurrency}/{tier0.concurrency}, rejected "
              f"{sum(dict(server.rejected).values())}")
        print("\nA limit set too high: the server's 429 names the real one and the governor "
              "adopts it:")
        final_rpm = await adopted(fake.base_url, fake.api_key, args.window, tier0.rpm or 3)
    print(f"tier tuning: {args.requests} requests under tier 0 with a {args.window:g} s "
          f"minute in {seconds:.1f} s, {rate_limited} 429s; server-named limit adopted: rpm "
          f"{(tier0.rpm or 3) * 4} -> {final_rpm}")
    return 0 if rate_limited == 0 and final_rpm == tier0.rpm else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=1.0,
                        help="length of a 'minute' in seconds for the demo (default 1)")
    parser.add_argument("--requests", type=int, default=9,
                        help="requests paced under tier 0 (3 per window)")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
