"""``kimi-actors fake-server``: run FakeKimi from the command line for demos and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
from collections.abc import Callable

from ..limits import Limits
from .faults import Faults, Latency
from .server import FAKE_API_KEY, FakeKimi

__all__ = ["build_limits", "register_cli", "run_fake_server"]

_MINUTES_PER_DAY = 1440


def _faults(text: str) -> Faults:
    try:
        return Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fake-server`` subcommand to the ``kimi-actors`` command."""
    parser = subparsers.add_parser(
        "fake-server",
        help="serve a fake Kimi API (limits, faults) for tests, demos and benchmarks",
        description="Serve FakeKimi, a Kimi API look-alike with deterministic replies, "
                    "account limits and injected faults, until SIGINT or SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--tier", type=int, choices=range(6), metavar="T",
                        help="enforce the limits of Kimi account tier T (0-5); default: none")
    parser.add_argument("--window-seconds", type=_positive, default=60.0, metavar="S",
                        help="length of a rate-limit 'minute' (default 60); the TPD 'day' "
                             "is 1440 of them")
    parser.add_argument("--api-key", default=FAKE_API_KEY,
                        help="the key clients must send (default: the public fake key)")
    parser.add_argument("--faults", type=_faults, default=Faults(), metavar="SPEC",
                        help="e.g. overload=0.05,server_error=0.03,drop=0.1,split_writes")
    parser.add_argument("--retry-after-header", action="store_true",
                        help="send Retry-After on rate-limit 429s")
    parser.add_argument("--first-token-latency", type=_non_negative, default=0.0, metavar="S",
                        help="seconds before the first chunk or the non-stream answer")
    parser.add_argument("--token-latency", type=_non_negative, default=0.0, metavar="S",
                        help="seconds between stream chunks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    parser.set_defaults(func=run_fake_server)


def build_limits(tier: int | None, window_seconds: float) -> Limits:
    """Tier ``tier``'s limits (or none) over windows of ``window_seconds``."""
    day = window_seconds * _MINUTES_PER_DAY
    if tier is None:
        return Limits(minute=window_seconds, day=day)
    return Limits.tier(tier, minute=window_seconds, day=day)


def _key_hint(api_key: str) -> str:
    if api_key == FAKE_API_KEY:
        return f"{FAKE_API_KEY} (the default fake key)"
    return f"the one given with --api-key (ending in ...{api_key[-4:]})" if len(api_key) > 8 \
        else "the one given with --api-key"


def run_fake_server(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace,
                on_ready: Callable[[FakeKimi], object] | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Serve FakeKimi as ``args`` say until ``stop`` is set or a SIGINT/SIGTERM arrives."""
    stop = stop if stop is not None else asyncio.Event()
    limits = build_limits(args.tier, args.window_seconds)
    fake = FakeKimi(api_key=args.api_key, limits=limits, faults=args.faults,
                    latency=Latency(first_token=args.first_token_latency,
                                    per_token=args.token_latency),
                    seed=args.seed, host=args.host, port=args.port,
                    retry_after_header=args.retry_after_header)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, threads
            pass
    try:
        try:
            await fake.start()
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            what = ("is already in use (another fake-server, or another program?)" if taken
                    else f"cannot be listened on: {exc.strerror or exc}")
            print(f"error: port {args.port} on {args.host} {what}; choose another --port, or "
                  f"--port 0 for any free one", file=sys.stderr, flush=True)
            return 2
        try:
            tier = "none" if args.tier is None else f"tier {args.tier}"
            print(f"FakeKimi serving {fake.base_url}", flush=True)
            print(f"api key: {_key_hint(args.api_key)}", flush=True)
            print(f"limits: {tier}, minute = {args.window_seconds:g} s; "
                  f"statistics at {fake.base_url.removesuffix('/v1')}/_fake/stats", flush=True)
            if on_ready is not None:
                on_ready(fake)
            await stop.wait()
            stats = fake.statistics()
        finally:
            await fake.close()
        print(f"stopped after {stats.requests} requests ({stats.accepted} accepted, "
              f"{stats.completed} completed)", flush=True)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    return 0
