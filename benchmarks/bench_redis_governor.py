"""The shared governor's cost: admissions per second, Redis round trips per request and
admission latency, at 1, 4 and 16 processes, against the in-memory governor in the same run.

Each process runs ``--tasks`` tasks that admit, release and settle in a loop for ``--seconds``
(limits so high that nothing waits: this measures the governor, not the limits). A real
redis-server is started on a free loopback port. The in-memory governor runs the same loop
in one process, as the baseline.

``--gate`` puts each governor behind the admission gate, as a Supervisor does (priorities,
tenants, the working concurrency; as many of its waiters inside the governor at once as the
governor batches: 32 for Redis, 8 in memory).

    python benchmarks/bench_redis_governor.py [--processes 1,4,16] [--tasks 16] [--seconds 3]
                                              [--gate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kimi_actors import AdaptPolicy, Limits, MonotonicClock, RedisConfig
from kimi_actors.governance.gate import Gate
from kimi_actors.governance.governor import Governor
from kimi_actors.governance.interface import GovernorProtocol
from kimi_actors.governance.redis import RedisGovernor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_server import RedisServer

LIMITS = Limits(concurrency=100_000, rpm=100_000_000, tpm=10**12, minute=60)


async def load(governor: GovernorProtocol | Gate, tasks: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            asked = time.perf_counter()
            permit = await governor.admit(500)
            latencies.append(time.perf_counter() - asked)
            governor.restamp(permit)
            await asyncio.sleep(0)  # the request
            governor.release(permit)
            governor.settle(permit, 420)

    async with asyncio.TaskGroup() as group:
        dispatcher = group.create_task(governor.run())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        elapsed = time.perf_counter() - started
        inner = governor.governor if isinstance(governor, Gate) else governor
        if isinstance(inner, RedisGovernor):
            await inner.sync()
        stats = governor.statistics()
        dispatcher.cancel()
    return {"admitted": len(latencies), "elapsed": elapsed, "latencies": latencies,
            "round_trips": stats.shared.round_trips if stats.shared else 0}


def gated(governor: GovernorProtocol, gate: bool) -> GovernorProtocol | Gate:
    return Gate(governor, clock=MonotonicClock(), adapt=AdaptPolicy(start=None)) if gate \
        else governor


def child(url: str, tasks: int, seconds: float, start_at: float, gate: bool) -> None:
    async def main() -> dict[str, Any]:
        governor = RedisGovernor.from_config(RedisConfig(url=url), LIMITS, account="bench",
                                             clock=MonotonicClock())
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await load(gated(governor, gate), tasks, seconds)

    print(json.dumps(asyncio.run(main())), flush=True)


def run_processes(url: str, count: int, tasks: int, seconds: float,
                  gate: bool) -> dict[str, Any]:
    start_at = time.time() + 1.5  # every child has imported and connected by then
    children = [subprocess.Popen(
        [sys.executable, __file__, "--child", url, str(tasks), str(seconds), str(start_at),
         str(int(gate))], stdout=subprocess.PIPE, text=True) for _ in range(count)]
    reports = [json.loads(process.communicate(timeout=seconds + 60)[0]) for process in children]
    latencies = sorted(value for report in reports for value in report["latencies"])
    admitted = sum(report["admitted"] for report in reports)
    elapsed = max(report["elapsed"] for report in reports)
    return {"admitted": admitted, "rate": admitted / elapsed,
            "round_trips": sum(report["round_trips"] for report in reports) / admitted,
            "p50": statistics.median(latencies), "p99": latencies[int(0.99 * len(latencies))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,4,16")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--gate", action="store_true",
                        help="admit through the admission gate, as a Supervisor does")
    args = parser.parse_args()

    async def in_memory() -> dict[str, Any]:
        return await load(gated(Governor(LIMITS, clock=MonotonicClock()), args.gate),
                          args.tasks, args.seconds)

    base = asyncio.run(in_memory())
    base_latencies = sorted(base["latencies"])
    base_rate = base["admitted"] / base["elapsed"]
    print(f"in-memory governor{' behind the gate' if args.gate else ''}, 1 process x "
          f"{args.tasks} tasks: {base_rate:,.0f} admissions/s, "
          f"p50 {statistics.median(base_latencies) * 1e6:.1f} us, "
          f"p99 {base_latencies[int(0.99 * len(base_latencies))] * 1e6:.1f} us")
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch))
        server.start()
        try:
            print(f"{'processes':>9} {'admissions/s':>13} {'vs memory':>10} "
                  f"{'round trips/req':>16} {'p50 ms':>8} {'p99 ms':>8}")
            for count in (int(value) for value in args.processes.split(",")):
                row = run_processes(server.url, count, args.tasks, args.seconds, args.gate)
                print(f"{count:9} {row['rate']:13,.0f} {row['rate'] / base_rate:10.3f} "
                      f"{row['round_trips']:16.2f} {row['p50'] * 1e3:8.2f} "
                      f"{row['p99'] * 1e3:8.2f}")
        finally:
            server.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
              sys.argv[6] == "1")
    else:
        main()
