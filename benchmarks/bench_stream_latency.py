"""The client's own delay between reading a stream's bytes and delivering its deltas.

``--streams`` streams run at once through one Supervisor against FakeKimi (its own process)
sending a token every ``--per-token`` seconds, so every stream stays open for about
``max_tokens x per_token`` seconds and the client handles all of them concurrently. Stream
starts are spread over one token interval (``--stagger``), so that the server's token timers
are not all in phase, as real streams are not.

Measured inside the client, with wrappers installed by this script only (the library is
untouched): ``StreamResponse.chunks`` is wrapped to stamp ``time.perf_counter()`` when each
block of bytes comes out of the socket reader, ``ChunkAssembler.feed_event`` to queue that
stamp once for every delta the block's events produce, and the consumer stamps each delta as
it comes out of ``async for``. Deltas of one stream are delivered in order, so the i-th stamp
queued belongs to the i-th delta delivered. A context variable set by each consumer (and
inherited by the stream actor's task) keeps the streams apart. The delay therefore covers SSE
decoding, assembling, the bounded queue and the hand-over to the consumer's task, including
the wait for the event loop while it runs the other streams' work.

To tell that wait apart, two diagnostics run alongside: a heartbeat task that asks to wake
every 5 ms and records how late it wakes (the loop's lag: what any code in this loop would
wait), and the garbage collector's pauses (``gc.callbacks``). Client CPU as a share of one
core says whether the client could keep up with the offered load at all.

Target: p99 <= 5 ms. The client and FakeKimi share the machine's cores. ``--sweep`` repeats
the run at several token intervals to show where the load stops saturating this machine.

    python benchmarks/bench_stream_latency.py [--streams 1000] [--per-token 0.02]
                                              [--max-tokens 50] [--stagger S] [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import time
from collections import deque
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from _common import FakeServer, fake_server, percentile, server_spec

from kimi_actors import Limits, Supervisor
from kimi_actors.protocol.chunks import ChunkAssembler, Delta
from kimi_actors.protocol.sse import SSEEvent
from kimi_actors.testing import expected_reply
from kimi_actors.transport import StreamResponse

MODEL = "kimi-k2.6"
TARGET_P99_MS = 5.0
HEARTBEAT = 0.005
SWEEP = ((0.02, 50), (0.05, 40), (0.1, 30), (0.25, 16), (0.5, 10))


class StreamRecord:
    """One stream's read stamps waiting for their deltas to be delivered."""

    __slots__ = ("pending", "read_at")

    def __init__(self) -> None:
        self.read_at = 0.0
        self.pending: deque[float] = deque()


CURRENT: contextvars.ContextVar[StreamRecord | None] = contextvars.ContextVar(
    "bench_stream_record", default=None)


def install_stamps() -> None:
    """Wrap the two points where bytes come in and deltas come out of the parser."""
    original_chunks = StreamResponse.chunks
    original_feed_event = ChunkAssembler.feed_event

    async def stamped_chunks(self: StreamResponse) -> AsyncGenerator[bytes, None]:
        record = CURRENT.get()
        async with aclosing(original_chunks(self)) as chunks:
            async for data in chunks:
                if record is not None:
                    record.read_at = time.perf_counter()
                yield data

    def stamped_feed_event(self: ChunkAssembler, event: SSEEvent) -> list[Delta]:
        deltas = original_feed_event(self, event)
        record = CURRENT.get()
        if record is not None and deltas:
            record.pending.extend([record.read_at] * len(deltas))
        return deltas

    StreamResponse.chunks = stamped_chunks  # type: ignore[method-assign]
    ChunkAssembler.feed_event = stamped_feed_event  # type: ignore[method-assign]


class GCPauses:
    """Wall time of every garbage collection, by generation."""

    def __init__(self) -> None:
        self.pauses: list[list[float]] = [[], [], []]
        self.active = False
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def reset(self) -> None:
        self.pauses = [[], [], []]

    def summary(self) -> str:
        parts = [f"gen{generation} {len(pauses)} x, max {max(pauses) * 1000:.1f} ms"
                 for generation, pauses in enumerate(self.pauses) if pauses]
        return "; ".join(parts) or "none"


GC_PAUSES = GCPauses()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    delays_ms: list[float]
    steady_ms: list[float]
    lags_ms: list[float]
    wall: float
    cpu: float
    completed: int
    failed: int
    wrong_text: int
    resumes: int
    peak_open: int
    gc: str

    def p(self, share: float, steady: bool = False) -> float:
        return percentile(self.steady_ms if steady else self.delays_ms, share)


async def run(server: FakeServer, streams: int, max_tokens: int, stagger: float) -> Outcome:
    delays: list[tuple[float, float]] = []
    first_reads: list[float] = []
    lags: list[float] = []
    wrong_text = 0
    open_now = peak_open = 0
    bodies = [{"model": MODEL, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": f"latency question {index}"}]}
              for index in range(streams)]

    async def consume(sup: Supervisor, body: dict[str, Any], start_after: float) -> None:
        nonlocal wrong_text, open_now, peak_open
        await asyncio.sleep(start_after)
        record = StreamRecord()
        CURRENT.set(record)
        pieces: list[str] = []
        async with sup.stream(**body) as stream:
            open_now += 1
            peak_open = max(peak_open, open_now)
            async for delta in stream:
                delivered = time.perf_counter()
                read_at = record.pending.popleft()
                delays.append((read_at, delivered - read_at))
                if not pieces:
                    first_reads.append(read_at)
                pieces.append(delta.content)
            open_now -= 1
        expected = expected_reply(body["model"], body["messages"], max_tokens=max_tokens)
        if "".join(pieces) != expected.content:
            wrong_text += 1

    async def heartbeat() -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)
            lags.append(time.perf_counter() - asked - HEARTBEAT)

    gc.collect()
    GC_PAUSES.reset()
    GC_PAUSES.active = True
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        async with Supervisor(api_key=server.api_key, base_url=server.base_url,
                              limits=Limits()) as sup, asyncio.TaskGroup() as group:
            beat = group.create_task(heartbeat())
            spread = stagger / streams
            await asyncio.gather(*(consume(sup, body, index * spread)
                                   for index, body in enumerate(bodies)))
            beat.cancel()
            stats = sup.statistics()
    finally:
        GC_PAUSES.active = False
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    all_open = max(first_reads)
    return Outcome(delays_ms=sorted(delay * 1000 for _, delay in delays),
                   steady_ms=sorted(delay * 1000 for read_at, delay in delays
                                    if read_at > all_open),
                   lags_ms=sorted(max(0.0, lag) * 1000 for lag in lags), wall=wall, cpu=cpu,
                   completed=stats.completed, failed=stats.failed, wrong_text=wrong_text,
                   resumes=stats.resumes, peak_open=peak_open, gc=GC_PAUSES.summary())


def measure(streams: int, per_token: float, max_tokens: int, stagger: float) -> Outcome:
    spec = server_spec(latency={"per_token": per_token})
    with fake_server(spec) as server:
        return asyncio.run(run(server, streams, max_tokens, stagger))


def report(outcome: Outcome, streams: int, per_token: float) -> bool:
    ms = outcome.delays_ms
    lags = outcome.lags_ms
    count = len(ms)
    print(f"  {count} deltas from {outcome.completed} streams "
          f"({count / max(outcome.completed, 1):.1f} per stream), failed {outcome.failed}, "
          f"wrong text {outcome.wrong_text}, resumes {outcome.resumes}; peak open at once "
          f"{outcome.peak_open}")
    print(f"  wall {outcome.wall:.2f} s, {count / outcome.wall:.0f} deltas/s; client CPU "
          f"{outcome.cpu:.2f} s ({outcome.cpu / outcome.wall:.0%} of one core, "
          f"{outcome.cpu / count * 1e6:.0f} µs per delta)")
    print(f"  loop lag (5 ms heartbeat): p50 {percentile(lags, 0.5):.2f} ms, p99 "
          f"{percentile(lags, 0.99):.2f} ms, max {lags[-1] if lags else 0.0:.2f} ms; "
          f"gc pauses: {outcome.gc}")
    steady = outcome.steady_ms
    if steady:
        print(f"  steady state (bytes read after every stream had its first delta): "
              f"{len(steady)} deltas, p50 {outcome.p(0.5, True):.2f} ms, p99 "
              f"{outcome.p(0.99, True):.2f} ms, max {steady[-1]:.2f} ms")
    p50, p99 = outcome.p(0.5), outcome.p(0.99)
    ok = p99 <= TARGET_P99_MS and outcome.failed == 0 and outcome.wrong_text == 0
    print(f"stream latency ({streams} streams, a token every {per_token * 1000:g} ms): "
          f"bytes read -> delta delivered p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 "
          f"{outcome.p(0.999):.2f} ms, max {ms[-1]:.2f} ms over {count} deltas "
          f"(target p99 <= {TARGET_P99_MS:g} ms) {'ok' if ok else 'MISSED'}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--per-token", type=float, default=0.02,
                        help="FakeKimi's seconds between stream events (default 0.02)")
    parser.add_argument("--max-tokens", type=int, default=50,
                        help="caps each reply; replies have 8-80 tokens (default 50)")
    parser.add_argument("--stagger", type=float, default=None,
                        help="spread the stream starts evenly over this many seconds "
                             "(default: one --per-token interval)")
    parser.add_argument("--sweep", action="store_true",
                        help="also run at token intervals of "
                             f"{', '.join(f'{pt * 1000:g}' for pt, _ in SWEEP[1:])} ms")
    args = parser.parse_args()
    if args.streams < 1 or args.per_token < 0 or args.max_tokens < 1:
        parser.error("need --streams >= 1, --per-token >= 0 and --max-tokens >= 1")
    if args.stagger is not None and args.stagger < 0:
        parser.error("need --stagger >= 0")
    install_stamps()
    runs = [(args.per_token, args.max_tokens)]
    if args.sweep:
        runs += [(per_token, tokens) for per_token, tokens in SWEEP
                 if (per_token, tokens) != runs[0]]
    for per_token, max_tokens in runs:
        stagger = per_token if args.stagger is None else args.stagger
        print(f"{args.streams} concurrent streams, FakeKimi sends a token every "
              f"{per_token * 1000:g} ms, max_tokens {max_tokens}, starts spread over "
              f"{stagger * 1000:g} ms", flush=True)
        report(measure(args.streams, per_token, max_tokens, stagger), args.streams, per_token)


if __name__ == "__main__":
    main()
