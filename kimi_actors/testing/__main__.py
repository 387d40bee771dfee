"""``python -m kimi_actors.testing fake-server ...``: FakeKimi without the main CLI."""

from __future__ import annotations

import argparse
import sys

from .cli import register_cli

__all__: list[str] = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kimi_actors.testing")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_cli(subparsers)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
