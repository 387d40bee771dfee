"""The ``kimi-actors`` command: ``run`` (a batch file), ``demo``, ``tiers``, ``fake-server``.

A Ctrl-C outside the batch runner's own handling (while a file is scanned, before anything is
sent) exits with 130 and a short line instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .batch.cli import register_cli as register_batch_cli
from .batch.runner import EXIT_INTERRUPTED
from .limits import TIERS
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-actors",
        description="Call the Kimi (Moonshot) chat API hard and at scale, within your limits.")
    parser.add_argument("--version", action="version", version=f"kimi-actors {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tiers = sub.add_parser("tiers", help="print Kimi's account tiers and their limits")
    tiers.set_defaults(func=_cmd_tiers)
    register_batch_cli(sub)
    register_fake_server_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; what was written stays valid: run the same command again to "
              "resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
