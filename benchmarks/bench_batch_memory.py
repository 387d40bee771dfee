"""``kimi-actors run`` on a large file: peak memory and lines per second.

The runner (``run_batch``, the code behind ``kimi-actors run``) sends ``--lines`` short
requests to FakeKimi in its own process (no latency, limits far above what the client can
reach), so this process holds only the client: the file is streamed, ``Supervisor.map`` keeps
a bounded window of actors, and the done-set of a resumable run costs 8 bytes a line. Peak
memory should therefore hardly depend on the number of lines: run it with ``--lines 10000``
and ``--lines 100000`` to compare.

Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the whole process, interpreter
and imports included); the figure before the run is printed next to it.

    python benchmarks/bench_batch_memory.py [--lines 100000] [--concurrency 128]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import fake_server, server_spec

from kimi_actors.batch import RunConfig, run_batch

MODEL = "moonshot-v1-8k"


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def write_requests(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for index in range(count):
            fh.write(json.dumps({
                "custom_id": f"mem-{index:07d}",
                "body": {"model": MODEL, "max_tokens": 8,
                         "messages": [{"role": "user", "content": f"question {index}"}]},
            }) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="requests (default 100000)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="requests in flight (default 128)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        source, output = Path(scratch) / "in.jsonl", Path(scratch) / "out.jsonl"
        write_requests(source, args.lines)
        size_mb = source.stat().st_size / 1e6
        with fake_server(server_spec()) as server:
            config = RunConfig(input=source, output=output, base_url=server.base_url,
                               concurrency=args.concurrency, rpm=1_000_000_000,
                               tpm=1_000_000_000_000)
            before = peak_rss_mb()
            log = io.StringIO()
            started = time.perf_counter()
            result = run_batch(config, stdout=log, stderr=log, is_tty=False,
                               environ={"MOONSHOT_API_KEY": server.api_key})
            elapsed = time.perf_counter() - started
        peak = peak_rss_mb()
        output_mb = output.stat().st_size / 1e6
        with open(output, "rb") as fh:
            written = sum(1 for _ in fh)

    summary = result.summary
    assert summary is not None, log.getvalue()
    print(f"{args.lines:,} lines ({size_mb:.1f} MB in, {output_mb:.1f} MB out), concurrency "
          f"{args.concurrency}: exit {result.exit_code}, ok {summary.ok:,}, written {written:,}")
    print(f"  {args.lines / elapsed:,.0f} lines/s ({elapsed:.1f} s, scan and send)")
    print(f"  peak RSS {peak:.1f} MB (before the run {before:.1f} MB; +{peak - before:.1f} MB)",
          flush=True)


if __name__ == "__main__":
    main()
