"""Shared helpers of the client benchmarks: FakeKimi in its own process, and small statistics.

The server runs in a separate process so that its CPU is never counted as the client's: the
benchmarks measure the client with ``time.process_time()``, which sees only its own process.
The child is this very file run as a script (``python _common.py SPEC``): it serves FakeKimi
as the JSON spec says, prints ``READY <base_url>`` once it listens (the parent waits for that
line, never sleeps), serves until its stdin closes, then prints its final statistics as one
JSON line and exits. Closing stdin also stops it when the parent dies.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["FakeServer", "describe", "fake_server", "median", "percentile", "server_spec"]

_READY = "READY "
_FINAL = "FINAL "


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeServer:
    """A FakeKimi child process: where it listens, its key, and its process id."""

    base_url: str
    api_key: str
    pid: int

    @property
    def stats_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/_fake/stats"


def server_spec(*, limits: dict[str, float] | None = None,
                latency: dict[str, float] | None = None,
                faults: dict[str, float | bool] | None = None, seed: int = 0,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able description of a FakeKimi: keyword arguments of Limits, Latency, Faults,
    and ``options``, FakeKimi's own (``capacity``, ``vague_rate_limits``)."""
    return {"limits": limits or {}, "latency": latency or {}, "faults": faults or {},
            "seed": seed, "options": options or {}}


@contextmanager
def fake_server(spec: dict[str, Any], final_stats: dict[str, Any] | None = None,
                ) -> Iterator[FakeServer]:
    """Run FakeKimi in a child process for the duration of the block.

    ``final_stats``, when given, receives the server's statistics at its exit (the JSON form
    of ``FakeStats``)."""
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        if not line.startswith(_READY):
            raise RuntimeError(f"FakeKimi did not start: {line!r}")
        base_url, api_key = line[len(_READY):].split()
        yield FakeServer(base_url=base_url, api_key=api_key, pid=process.pid)
    finally:
        process.stdin.close()
        for line in process.stdout:
            if line.startswith(_FINAL) and final_stats is not None:
                final_stats.update(json.loads(line[len(_FINAL):]))
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def describe(error: BaseException) -> str:
    """An error as a benchmark reports it: its type, message and notes."""
    notes = " ".join(getattr(error, "__notes__", ()))
    return f"{type(error).__name__}: {error} {notes}"


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in [0, 1]) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


async def _serve(spec: dict[str, Any]) -> None:
    from kimi_actors import Limits
    from kimi_actors.testing import FakeKimi, Faults, Latency

    fake = FakeKimi(limits=Limits(**spec["limits"]), latency=Latency(**spec["latency"]),
                    faults=Faults(**spec["faults"]), seed=spec["seed"],
                    **spec.get("options", {}))
    loop = asyncio.get_running_loop()
    async with fake:
        print(f"{_READY}{fake.base_url} {fake.api_key}", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        stats = fake.statistics().to_json()
    print(f"{_FINAL}{json.dumps(stats)}", flush=True)


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1])))
