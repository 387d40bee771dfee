"""How much load one FakeKimi process sustains: non-stream requests per second, whole streams
per second, and concurrent open streams.

FakeKimi runs in its own process (``python -m kimi_actors.testing fake-server``); load comes
from raw aiohttp clients (not the library's runtime) in other processes, over loopback only,
bounded in count and time. Figures are printed, never asserted. Besides the throughput the
client sees, the server's own CPU time per request is read from /proc (Linux), which says what
one dedicated core would sustain whatever else shares the machine.
Target: >= 3,000 requests/s and >= 2,000 open streams, so FakeKimi is never the bottleneck of
the library's own benchmarks.

    python benchmarks/bench_fake_kimi.py [--seconds 5] [--clients 1] [--streams 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from kimi_actors.testing import FAKE_API_KEY

HEADERS = {"Authorization": f"Bearer {FAKE_API_KEY}"}
MODEL = "moonshot-v1-8k"


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process has used (None where /proc is missing)."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fake_server(*extra: str) -> Iterator[Server]:
    """A FakeKimi process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kimi_actors.testing", "fake-server", "--port", "0", *extra],
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://\S+/v1", line)
        if match is None:
            raise RuntimeError(f"fake-server did not start: {line!r}")
        yield Server(match.group(0), process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _hammer(base_url: str, seconds: float, concurrency: int, client: int,
                  stream: bool) -> int:
    """Send requests from ``concurrency`` workers for ``seconds``; count whole answers."""
    deadline = time.monotonic() + seconds
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        async def worker(worker_id: int) -> None:
            nonlocal done
            number = 0
            while time.monotonic() < deadline:
                number += 1
                body = {"model": MODEL, "max_tokens": 16, "stream": stream, "messages": [
                    {"role": "user", "content": f"client {client} worker {worker_id} #{number}"}]}
                async with session.post(f"{base_url}/chat/completions", json=body) as response:
                    data = await response.read()
                if response.status == 200 and (not stream or data.endswith(b"[DONE]\n\n")):
                    done += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


def _hammer_process(base_url: str, seconds: float, concurrency: int, client: int,
                    stream: bool, results: Any) -> None:
    results.put(asyncio.run(_hammer(base_url, seconds, concurrency, client, stream)))


def bench_throughput(seconds: float, clients: int, concurrency: int, stream: bool) -> None:
    kind = "streams (16 tokens each)" if stream else "non-stream requests"
    with fake_server() as server:
        results: Any = multiprocessing.Queue()
        processes = [multiprocessing.Process(
            target=_hammer_process, args=(server.base_url, seconds, concurrency, i, stream,
                                          results)) for i in range(clients)]
        cpu_before = server.cpu_seconds()
        started = time.monotonic()
        for process in processes:
            process.start()
        total = sum(results.get(timeout=seconds + 60) for _ in processes)
        elapsed = time.monotonic() - started
        cpu_after = server.cpu_seconds()
        for process in processes:
            process.join(timeout=10)
    line = (f"{kind}: {total:,} in {elapsed:.1f} s from {clients} client process(es) x "
            f"{concurrency} connections = {total / elapsed:,.0f}/s")
    if cpu_before is not None and cpu_after is not None and total:
        per_request = (cpu_after - cpu_before) / total
        line += (f"; server CPU {per_request * 1e6:,.0f} us each, so one dedicated core "
                 f"serves ~{1 / per_request:,.0f}/s")
    print(line, flush=True)


async def _stats(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with session.get(base_url.removesuffix("/v1") + "/_fake/stats") as response:
        data: dict[str, Any] = await response.json()
        return data


async def _open_streams(base_url: str, count: int) -> None:
    connector = aiohttp.TCPConnector(limit=count + 1)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        opened = 0
        all_open = asyncio.Event()
        release = asyncio.Event()

        async def stream(number: int) -> None:
            """Open a stream, read its first event, hold it until told, then abandon it."""
            nonlocal opened
            body = {"model": MODEL, "stream": True, "max_tokens": 3,
                    "messages": [{"role": "user", "content": f"stream {number}"}]}
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                assert response.status == 200, response.status
                await response.content.readuntil(b"\n\n")
                opened += 1
                if opened == count:
                    all_open.set()
                await release.wait()
                response.close()

        started = time.monotonic()
        tasks = [asyncio.create_task(stream(i)) for i in range(count)]
        await asyncio.wait_for(all_open.wait(), timeout=120)
        open_after = time.monotonic() - started
        stats = await _stats(session, base_url)
        release.set()
        await asyncio.gather(*tasks)
    print(f"open streams: {count:,} opened in {open_after:.1f} s and held; the server saw "
          f"{stats['peak_concurrency']:,} open at once ({stats['accepted']:,} accepted, "
          f"{stats['completed']:,} completed when asked), then the client abandoned them all",
          flush=True)


def bench_open_streams(count: int, hold: float) -> None:
    with fake_server("--token-latency", str(hold)) as server:
        asyncio.run(_open_streams(server.base_url, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="connections per load generator process")
    parser.add_argument("--streams", type=int, default=2000, help="streams to hold open")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds between stream chunks, so streams stay open")
    args = parser.parse_args()
    print(json.dumps({"python": sys.version.split()[0], "aiohttp": aiohttp.__version__,
                      "cpus": os.cpu_count(), "load_average": os.getloadavg()}), flush=True)
    bench_throughput(args.seconds, args.clients, args.concurrency, stream=False)
    bench_throughput(args.seconds, args.clients, args.concurrency, stream=True)
    bench_open_streams(args.streams, args.hold)


if __name__ == "__main__":
    main()
