"""Throughput of SSEDecoder on a realistic Kimi stream: MB/s and events/s.

The stream is what ``stream: true`` sends: one ``chat.completion.chunk`` JSON per event, a
role chunk first, a usage chunk and ``data: [DONE]`` last. It is decoded fed whole, in 1 KiB
pieces (a typical socket read) and in 64-byte pieces (a slow trickle), with ASCII tokens and
with Chinese tokens sent as raw UTF-8. Prints figures only; asserts nothing about time.

Run: ``python benchmarks/bench_sse.py [--events N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial

from kimi_actors.protocol.sse import SSEDecoder


def kimi_stream(events: int, token: str) -> bytes:
    """A stream of ``events`` content chunks framed exactly as Kimi frames them."""

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "kimi-k2",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return b"data: " + text.encode() + b"\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": token}) for _ in range(events)]
    parts.append(chunk({}, "stop"))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def pieces(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def decode_all(feeds: list[bytes]) -> int:
    decoder = SSEDecoder()
    count = 0
    for piece in feeds:
        count += len(decoder.feed(piece))
    count += len(decoder.close())
    return count


def best_of(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    best = float("inf")
    count = 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - start)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(f"{'stream':<10} {'feeding':<12} {'MB/s':>9} {'events/s':>12}")
    for label, token in (("ascii", "token"), ("chinese", "你好")):
        stream = kimi_stream(args.events, token)
        for how, feeds in (
            ("whole", [stream]),
            ("1 KiB", pieces(stream, 1024)),
            ("64 B", pieces(stream, 64)),
        ):
            seconds, count = best_of(args.repeat, partial(decode_all, feeds))
            expected = args.events + 3
            if count != expected:
                raise SystemExit(f"decoded {count} events, expected {expected}")
            print(f"{label:<10} {how:<12} {len(stream) / seconds / 1e6:>9.1f} "
                  f"{count / seconds:>12,.0f}")
    print(f"({args.events:,} events per stream, "
          f"{len(kimi_stream(args.events, 'token')) / 1e6:.1f} MB ascii; best of {args.repeat})")


if __name__ == "__main__":
    main()
