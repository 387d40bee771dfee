"""What uvloop and ``gc.freeze()`` do for ``kimi-actors run``: CPU of the whole command.

FakeKimi runs in its own process (no limits, no faults); ``kimi-actors run`` sends
``--requests`` streams from a generated file to it, as a subprocess whose CPU time (user +
system, from ``os.wait4``) is the figure. Four variants, alternated over ``--rounds``:
asyncio's loop or uvloop (``KIMI_ACTORS_LOOP``), with or without ``gc.freeze()``
(``KIMI_ACTORS_GC_FREEZE``). Prints medians and ratios to plain asyncio without freezing.

    python benchmarks/bench_cli.py [--requests 3000] [--rounds 3] [--no-stream]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import fake_server, median, server_spec

VARIANTS = {"asyncio": {"KIMI_ACTORS_LOOP": "asyncio", "KIMI_ACTORS_GC_FREEZE": "0"},
            "asyncio + freeze": {"KIMI_ACTORS_LOOP": "asyncio", "KIMI_ACTORS_GC_FREEZE": "1"},
            "uvloop": {"KIMI_ACTORS_LOOP": "uvloop", "KIMI_ACTORS_GC_FREEZE": "0"},
            "uvloop + freeze (the default)": {"KIMI_ACTORS_LOOP": "uvloop",
                                              "KIMI_ACTORS_GC_FREEZE": "1"}}


def write_input(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for number in range(count):
            fh.write(json.dumps({"custom_id": f"r{number}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": {"model": "kimi-k2.6", "max_tokens": 50,
                                          "messages": [{"role": "user",
                                                        "content": f"question {number}"}]}})
                     + "\n")


def cpu_of(command: list[str], environ: dict[str, str]) -> float:
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    error = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"kimi-actors run failed: {error[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch, fake_server(server_spec()) as server:
        source = Path(scratch) / "in.jsonl"
        write_input(source, args.requests)
        cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for number in range(args.rounds):
            names = list(VARIANTS)
            names = names[number % len(names):] + names[:number % len(names)]
            for name in names:
                output = Path(scratch) / f"out-{number}-{len(cpu[name])}.jsonl"
                command = [sys.executable, "-m", "kimi_actors", "run", str(source),
                           "--output", str(output), "--base-url", server.base_url,
                           "--concurrency", "200", "--rpm", "1000000", "--tpm", "1000000000"]
                if not args.no_stream:
                    command.append("--stream")
                environ = {**os.environ, "MOONSHOT_API_KEY": server.api_key, **VARIANTS[name]}
                cpu[name].append(cpu_of(command, environ))
                print(f"  round {number + 1} {name}: {cpu[name][-1]:.2f} s CPU", flush=True)
        base = median(cpu["asyncio"])
        for name, values in cpu.items():
            per = median(values) / args.requests * 1e6
            print(f"kimi-actors run, {name}: {median(values):.2f} s CPU for {args.requests:,} "
                  f"{'requests' if args.no_stream else 'streams'} ({per:.0f} µs each), "
                  f"{median(values) / base:.2f}x asyncio", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-stream", action="store_true")
    main(parser.parse_args())
