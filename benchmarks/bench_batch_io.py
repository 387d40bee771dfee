"""Batch file I/O: lines/s and peak memory of scanning and streaming an input file, of writing
results and of scanning an output for resume.

A file of N generated requests (English, Chinese and mixed prompts, some with a system
message) is written to a temporary directory. Each operation is timed (best of R runs, without
tracing) and then run once more under ``tracemalloc`` for its peak of Python allocations; the
peak of a streamed read should not grow with the file, and the scan's should grow by about 8
bytes a line (the sorted custom_id hashes). Prints figures only; asserts nothing about time.

Run: ``python benchmarks/bench_batch_io.py [--lines N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from kimi_actors.batch import (
    DoneSet,
    OutputWriter,
    iter_requests,
    scan_input,
    scan_output,
)

PROMPTS = [
    "Explain what a rolling rate-limit window is in two sentences.",
    "How do I reverse a linked list in Python? Show the code.",
    "用两句话解释什么是限流。",
    "如何用 Python 读取一个大文件而不把它整个载入内存？",
    "Explain 'asyncio' 的 event loop，用中文回答。",
    "Give me 三个 tips for learning Chinese characters.",
]


def write_input(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": "You are a concise assistant."})
            messages.append({"role": "user", "content": f"{rng.choice(PROMPTS)} (#{i})"})
            body = {"model": "kimi-k2.6", "messages": messages,
                    "max_tokens": rng.choice([64, 256, 1024])}
            fh.write(json.dumps({"custom_id": f"req-{i:07d}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body},
                                ensure_ascii=False, separators=(",", ":")) + "\n")


def best_seconds(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def traced_peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_output(source: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    body = {"object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": "A short answer. 简短的回答。"}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}
    with OutputWriter(out, sync_every=100) as writer:
        for request in iter_requests(source, default_model=None):
            writer.write_result(request, status_code=200, request_id="req", body=body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        out = Path(tmp) / "out.jsonl"
        write_input(source, args.lines)
        half_done = DoneSet(f"req-{i:07d}" for i in range(0, args.lines, 2))

        def consume() -> int:
            return sum(1 for _ in iter_requests(source, default_model=None))

        operations: list[tuple[str, Callable[[], object]]] = [
            ("scan_input", lambda: scan_input(source, default_model=None)),
            ("scan_input, half done", lambda: scan_input(source, default_model=None,
                                                         skip=half_done)),
            ("iter_requests", consume),
            ("OutputWriter (fsync/100)", lambda: write_output(source, out)),
            ("scan_output", lambda: scan_output(out)),
        ]
        print(f"{args.lines:,} lines, input {source.stat().st_size / 1e6:.1f} MB, "
              f"best of {args.repeat}")
        print(f"{'operation':<26}{'lines/s':>12}{'peak MB':>10}{'bytes/line':>12}")
        for name, run in operations:
            seconds = best_seconds(run, args.repeat)
            peak = traced_peak(run)
            print(f"{name:<26}{args.lines / seconds:>12,.0f}{peak / 1e6:>10.2f}"
                  f"{peak / args.lines:>12.1f}")
        print(f"output {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
