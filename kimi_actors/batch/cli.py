"""``kimi-actors run`` and ``kimi-actors demo``: the batch runner from the command line.

``demo`` is the README's first command, so it needs nothing but the installed package: it
builds its input from the example file shipped inside the package (``kimi_actors/data``),
starts the embedded FakeKimi, runs the input through the same code as ``run --fake``, and then
checks every answer against :func:`~kimi_actors.testing.expected_reply`, the text FakeKimi is
bound to send whatever faults it injected on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..limits import TIERS
from .config import RunConfig, add_run_arguments, config_from_args, positive_float, positive_int
from .runner import EXIT_CODES, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, run_batch

__all__ = [
    "DEMO_FAULTS",
    "DEMO_REQUESTS",
    "DEMO_TIER",
    "DEMO_WINDOW_SECONDS",
    "DemoCheck",
    "demo_requests",
    "loop_factory",
    "register_cli",
    "verify_answers",
    "write_demo_input",
]

#: The demo's default faults: overloads, server errors and dropped streams, so retries and
#: stream resumes show in the summary. ``split_writes`` (streams cut into 1-7 byte TCP writes)
#: is left out: it costs the in-process server so much CPU that it, not the limits, would pace
#: the demo.
DEMO_FAULTS = "overload=0.03,server_error=0.02,drop=0.05"
DEMO_TIER = 1
#: 600 requests at tier 1 (200 RPM) fill three windows: two renewals of 5 s, so the run takes
#: about 10 s and shows the RPM limit binding without a single 429.
DEMO_REQUESTS = 600
DEMO_WINDOW_SECONDS = 5.0
_DEMO_DATA = "data/demo_requests.jsonl"
_SHOWN_MISMATCHES = 5


def _paragraph(text: str) -> str:
    """Wrapped by hand: the raw formatter that keeps the exit-code table aligned does not."""
    return textwrap.fill(text, width=79)


def _exit_code_table() -> str:
    return "exit codes:\n" + "\n".join(
        textwrap.fill(meaning, width=79, initial_indent=f"  {code:<4} ",
                      subsequent_indent=" " * 7) for code, meaning in EXIT_CODES.items())


def demo_requests(count: int) -> Iterator[dict[str, Any]]:
    """``count`` OpenAI Batch lines from the bundled example file, cycled; the custom_ids of
    the second and later rounds get a ``-r2``, ``-r3``... suffix so they stay unique."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count!r}")
    source = resources.files("kimi_actors").joinpath(_DEMO_DATA)
    lines = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    for number in range(count):
        line = dict(lines[number % len(lines)])
        round_number = number // len(lines) + 1
        if round_number > 1:
            line["custom_id"] = f"{line['custom_id']}-r{round_number}"
        yield line


def write_demo_input(path: Path, count: int) -> None:
    """Write the demo's input file (see :func:`demo_requests`)."""
    with open(path, "w", encoding="utf-8") as fh:
        for line in demo_requests(count):
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoCheck:
    """The answers in an output compared with FakeKimi's expected replies."""

    requests: int
    matched: int
    mismatched: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.matched == self.requests and not self.mismatched


def _expected_message(body: Mapping[str, Any]) -> tuple[str, str, str]:
    from ..testing import expected_reply

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    reply = expected_reply(body["model"], body["messages"], seed=body.get("seed"),
                           max_tokens=max_tokens if isinstance(max_tokens, int) else None)
    return reply.content, reply.reasoning_content, reply.finish_reason


def verify_answers(input_path: Path, output_path: Path) -> DemoCheck:
    """Compare every answer in ``output_path`` with what FakeKimi must answer to its request
    in ``input_path``: content, reasoning and finish_reason of the first choice. A custom_id
    answered twice counts as a mismatch.

    The input is read here with plain ``json``, not with the runner's parser: an oracle that
    shared that parser would agree with it on whatever it got wrong."""
    bodies: dict[str, Mapping[str, Any]] = {}
    with open(input_path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                bodies[item["custom_id"]] = item["body"]
    matched = 0
    seen: set[str] = set()
    mismatched: list[str] = []
    with open(output_path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            custom_id = record.get("custom_id")
            body = bodies.get(custom_id)
            if custom_id in seen or body is None:
                mismatched.append(str(custom_id))
                continue
            seen.add(custom_id)
            response = record.get("response") or {}
            if record.get("error") is not None or response.get("status_code") != 200:
                continue
            choice = response["body"]["choices"][0]
            message = choice["message"]
            got = (message.get("content"), message.get("reasoning_content", ""),
                   choice.get("finish_reason"))
            if got == _expected_message(body):
                matched += 1
            else:
                mismatched.append(custom_id)
    return DemoCheck(requests=len(bodies), matched=matched, mismatched=tuple(mismatched))


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The command line's event loop: uvloop's when it is installed and not declined
    (``KIMI_ACTORS_LOOP=asyncio``), else None, asyncio's."""
    if os.environ.get("KIMI_ACTORS_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        args.subparser.error(str(exc))
    result = run_batch(config, log_file=args.log_file, loop_factory=loop_factory())
    return result.exit_code


def _cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kimi-actors-demo-") as scratch:
        input_path = Path(scratch) / "demo_input.jsonl"
        output_path = args.output if args.output is not None else Path(scratch) / "demo.out.jsonl"
        write_demo_input(input_path, args.requests)
        try:
            config = RunConfig(input=input_path, output=output_path, tier=args.tier, fake=True,
                               window_seconds=args.window_seconds,
                               fake_faults=args.faults or None, stream=not args.no_stream,
                               report=args.report)
        except ValueError as exc:
            args.subparser.error(str(exc))
        tier = TIERS[args.tier]
        print(f"kimi-actors demo: {args.requests:,} requests (the example file shipped with the "
              f"package) through the full stack against the embedded FakeKimi, at tier "
              f"{args.tier}'s limits (RPM {tier.rpm:,}, concurrency {tier.concurrency:,}) with "
              f"a {args.window_seconds:g} s minute; faults: {args.faults or 'none'}; "
              f"{'non-stream requests' if args.no_stream else 'streams'}", file=sys.stderr,
              flush=True)
        result = run_batch(config, log_every=2.0, program="kimi-actors demo",
                           loop_factory=loop_factory())
        if result.exit_code == EXIT_INTERRUPTED:
            return result.exit_code
        check = verify_answers(input_path, output_path)
        print(f"verified {check.matched:,}/{check.requests:,} answers against FakeKimi's "
              f"expected replies", flush=True)
        if check.mismatched:
            shown = ", ".join(check.mismatched[:_SHOWN_MISMATCHES])
            print(f"mismatched or repeated custom_ids: {shown}"
                  f"{' ...' if len(check.mismatched) > _SHOWN_MISMATCHES else ''}",
                  file=sys.stderr)
        if args.output is not None:
            print(f"answers: {output_path}", flush=True)
        if result.exit_code != EXIT_OK:
            return result.exit_code
        return EXIT_OK if check.ok else EXIT_INCOMPLETE


def _tier(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if value not in TIERS:
        raise argparse.ArgumentTypeError(f"expected a Kimi tier 0-5, got {text!r}")
    return value


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` and ``demo`` subcommands to the ``kimi-actors`` command."""
    run = subparsers.add_parser(
        "run", help="send a JSONL file of chat requests within your limits, resumably",
        description=_paragraph(
                    "Send every request of INPUT.jsonl through the runtime at the highest rate "
                    "your limits allow and append each answer to OUT.jsonl as it finishes. "
                    "Run the same command again to resume: what is in the output is skipped. "
                    "Ctrl-C once stops sending and lets requests in flight finish; twice stops "
                    "now."),
        epilog=_exit_code_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)
    run.add_argument("--log-file", type=Path, metavar="PATH",
                     help="write the library's events (retries, resumes, 429s, breaker) "
                          "there; without it only errors reach the terminal")
    run.set_defaults(func=_cmd_run, subparser=run)

    demo = subparsers.add_parser(
        "demo", help="run the bundled example batch against the embedded fake Kimi",
        description=_paragraph(
                    "Start the embedded FakeKimi with a tier's limits and some faults, send "
                    "the example requests shipped with the package through the full stack "
                    "with progress and summary, and check every answer against the reply "
                    "FakeKimi is bound to give. Needs no account and no network."),
        epilog=_exit_code_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--tier", type=_tier, default=DEMO_TIER, metavar="0-5",
                      help=f"whose limits FakeKimi enforces and the runner keeps to "
                           f"(default {DEMO_TIER})")
    demo.add_argument("--requests", type=positive_int, default=DEMO_REQUESTS, metavar="N",
                      help=f"requests to send; the 200 examples are cycled "
                           f"(default {DEMO_REQUESTS})")
    demo.add_argument("--faults", default=DEMO_FAULTS, metavar="SPEC",
                      help=f"faults FakeKimi injects, '' for none (default {DEMO_FAULTS})")
    demo.add_argument("--window-seconds", type=positive_float, default=DEMO_WINDOW_SECONDS,
                      metavar="S", help=f"length of a rate-limit 'minute' "
                                        f"(default {DEMO_WINDOW_SECONDS:g})")
    demo.add_argument("--output", type=Path, metavar="PATH",
                      help="keep the answers there (default: a temporary file, deleted after "
                           "the check); an existing output is resumed")
    demo.add_argument("--no-stream", action="store_true",
                      help="send non-stream requests instead of streams")
    demo.add_argument("--report", type=Path, metavar="FILE.html",
                      help="also write the run's HTML report there (as run --report does)")
    demo.set_defaults(func=_cmd_demo, subparser=demo)

