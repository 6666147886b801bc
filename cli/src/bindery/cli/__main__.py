"""`bindery <command> ...`: one argparse subcommand per module of this package.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets `func`
(a function of the parsed arguments returning the exit status). Adding a command is adding its
module to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bindery.cli import events, launch

COMMANDS = (launch, events)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="bindery", description="Turn a repository into a live Jupyter session on a Bindery."
    )
    subparsers = root.add_subparsers(dest="command", metavar="<command>", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
