"""``kimi-actors run --fake`` at an RPM limit that binds: the share of the limit achieved, and
the 429s it cost.

The batch runner (``run_batch``, the code behind ``kimi-actors run``) sends ``--requests``
short requests from a JSONL file through the embedded FakeKimi (same process, same loop),
which enforces ``--rpm`` per ``--window`` seconds over exact rolling windows, as the runner's
governor does. Far more requests than one window holds, so RPM paces the run.

How the share is measured. Each attempt is stamped when its request headers reach the wire
(the transport's ``on_sent`` hook, the moment the governor counts it and close to when the
server does). A rolling-window limit of L per W lets attempt ``j + L``
go no earlier than one window after attempt ``j``, whatever the pattern, so the figure is
``W / mean(t[j + L] - t[j])`` over every ``j``: how fast the run renewed a full window of
attempts, 100% being exactly L in every window, the most a client can send without a 429 from
a rolling-window server. The first window's burst is only ever a start point, never counted
as throughput, and the figure does not swing with how N falls against the windows (as
``(N - L) / (T - W)`` or ``N / T`` style figures do; the script prints a whole-run figure for
context: the least possible span from the first to the last attempt, ``(ceil(N / L) - 1) * W``,
over the span measured). Retries count: the server counts them too.

Target: >= 98% with zero 429s. The governor stretches its windows by 1.5% against network
jitter, so about 98.5% is the ceiling by design.

    python benchmarks/bench_batch_rpm.py [--rpm 600] [--window 10] [--requests 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from _common import percentile

from kimi_actors.batch import RunConfig, rolling_window_seconds, run_batch
from kimi_actors.transport import RawResponse, Transport

MODEL = "moonshot-v1-8k"
TARGET = 0.98


def write_requests(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for index in range(count):
            fh.write(json.dumps({
                "custom_id": f"rpm-{index}",
                "body": {"model": MODEL, "max_tokens": 8,
                         "messages": [{"role": "user", "content": f"rpm question {index}"}]},
            }) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=600, help="the limit L (default 600)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="the length W of a 'minute', seconds (default 10)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests in the file; must exceed 2 x L (default 2000)")
    args = parser.parse_args()
    if args.rpm < 1 or args.window <= 0 or args.requests <= 2 * args.rpm:
        parser.error("need --rpm >= 1, --window > 0 and --requests > 2 x --rpm")
    limit, window = args.rpm, args.window
    print(f"kimi-actors run --fake: {args.requests} requests, limit {limit} per {window:g} s "
          f"rolling window; at least {rolling_window_seconds(args.requests, limit, window):g} s",
          flush=True)

    stamps: list[float] = []
    original = Transport.post

    async def stamped_post(self: Transport, path: str, body: bytes, *,
                           headers: Mapping[str, str] | None = None,
                           on_sent: Callable[[], None] | None = None) -> RawResponse:
        if on_sent is None:
            stamps.append(time.perf_counter())
            return await original(self, path, body, headers=headers)

        def sent() -> None:
            stamps.append(time.perf_counter())
            on_sent()

        return await original(self, path, body, headers=headers, on_sent=sent)

    with tempfile.TemporaryDirectory() as scratch:
        source, output = Path(scratch) / "in.jsonl", Path(scratch) / "out.jsonl"
        write_requests(source, args.requests)
        config = RunConfig(input=source, output=output, fake=True, rpm=limit,
                           window_seconds=window)
        log = io.StringIO()
        Transport.post = stamped_post  # type: ignore[method-assign]
        started = time.perf_counter()
        try:
            result = run_batch(config, stdout=log, stderr=log, is_tty=False)
        finally:
            Transport.post = original  # type: ignore[method-assign]
        elapsed = time.perf_counter() - started
        with open(output, encoding="utf-8") as fh:
            answered = sum(1 for line in fh if json.loads(line)["error"] is None)

    summary = result.summary
    assert summary is not None, log.getvalue()
    stamps.sort()
    gaps = sorted(stamps[j + limit] - stamps[j] for j in range(len(stamps) - limit))
    mean_gap = sum(gaps) / len(gaps)
    share = window / mean_gap
    span = stamps[-1] - stamps[0]
    least_span = rolling_window_seconds(len(stamps), limit, window)
    ok = share >= TARGET and summary.rate_limited == 0 and answered == args.requests
    print(f"  exit {result.exit_code}; answered {answered}/{args.requests}; attempts "
          f"{len(stamps)} (retries {summary.retries}); wall {elapsed:.2f} s")
    print(f"  window renewal t[j+{limit}] - t[j] over {len(gaps)} pairs: mean {mean_gap:.3f} s, "
          f"p50 {percentile(gaps, 0.5):.3f} s, p99 {percentile(gaps, 0.99):.3f} s, max "
          f"{gaps[-1]:.3f} s (ideal {window:g} s)")
    print(f"  whole run, for context: first to last attempt {span:.2f} s, least possible "
          f"{least_span:g} s ({least_span / span:.1%}); the runner's own summary: RPM "
          f"{summary.achieved_rpm:.1f} = {summary.achieved_rpm / limit:.1%} of {limit} "
          f"(time-averaged window fill)")
    print(f"rpm: achieved {share:.1%} of the limit ({share * limit:.1f} of {limit} per window), "
          f"429s {summary.rate_limited} (target >= {TARGET:.0%} with zero 429s) "
          f"{'ok' if ok else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
