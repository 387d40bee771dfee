"""The ``kimi-actors`` command: ``run`` (a batch file), ``demo``, ``tiers``, ``models``,
``fake-server``.

A Ctrl-C outside the batch runner's own handling (while a file is scanned, before anything is
sent) exits with 130 and a short line instead of a traceback.

The command is a whole program, so it makes two choices a library leaves to its application:
it runs on uvloop when that is installed (``pip install 'kimi-actors[speed]'``;
``KIMI_ACTORS_LOOP=asyncio`` keeps asyncio's loop), and it freezes the objects of its start-up
(``gc.freeze()``), so the collector no longer walks them during the run
(``KIMI_ACTORS_GC_FREEZE=0`` leaves them). benchmarks/bench_cli.py measures both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence

from . import __version__
from .actors.supervisor import DEFAULT_BASE_URL, Supervisor
from .batch.cli import register_cli as register_batch_cli
from .batch.config import BASE_URL_ENV, DEFAULT_API_KEY_ENV
from .batch.runner import EXIT_FATAL, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .errors import KimiError
from .limits import TIERS
from .redaction import redact_text
from .testing.cli import register_cli as register_fake_server_cli

__all__ = ["main"]


def _format_limit(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def _cmd_tiers(_: argparse.Namespace) -> int:
    header = f"{'tier':>4}  {'concurrency':>11}  {'RPM':>6}  {'TPM':>9}  {'TPD':>9}"
    print(header)
    for tier, limits in TIERS.items():
        print(f"{tier:>4}  {_format_limit(limits.concurrency):>11}  {_format_limit(limits.rpm):>6}"
              f"  {_format_limit(limits.tpm):>9}  {_format_limit(limits.tpd):>9}")
    return 0


async def _list_models(base_url: str | None, api_key: str | None, fake: bool) -> list[str]:
    if fake:
        from .testing import FakeKimi

        async with FakeKimi() as server, \
                Supervisor(api_key=server.api_key, base_url=server.base_url) as sup:
            return await sup.models()
    async with Supervisor(api_key=api_key, base_url=base_url) as sup:
        return await sup.models()


def _cmd_models(args: argparse.Namespace) -> int:
    api_key = None
    if not args.fake:
        api_key = os.environ.get(args.api_key_env, "").strip() or None
        if api_key is None:
            print(f"error: no API key: the environment variable {args.api_key_env} is not set "
                  f"(or try --fake)", file=sys.stderr)
            return EXIT_USAGE
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    try:
        models = asyncio.run(_list_models(base_url, api_key, args.fake))
    except KimiError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FATAL if exc.fatal_for_run else EXIT_INCOMPLETE
    for model in sorted(models):
        print(model)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-actors",
        description="Call the Kimi (Moonshot) chat API hard and at scale, within your limits.")
    parser.add_argument("--version", action="version", version=f"kimi-actors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tiers = sub.add_parser("tiers", help="print Kimi's account tiers and their limits")
    tiers.set_defaults(func=_cmd_tiers)
    models = sub.add_parser("models", help="list the models your account serves (GET /models)")
    models.add_argument("--base-url", metavar="URL",
                        help=f"default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}")
    models.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="NAME",
                        help=f"environment variable holding the key (default "
                             f"{DEFAULT_API_KEY_ENV})")
    models.add_argument("--fake", action="store_true",
                        help="ask the embedded FakeKimi instead (no account needed)")
    models.set_defaults(func=_cmd_models)
    register_batch_cli(sub)
    register_fake_server_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    # Only as a process of its own (argv from the command line): a caller's objects are
    # not this command's to freeze.
    if argv is None and os.environ.get("KIMI_ACTORS_GC_FREEZE", "1") != "0":
        gc.collect()
        gc.freeze()
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; what was written stays valid: run the same command again to "
              "resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
