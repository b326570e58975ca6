"""The `stratalm` command: parses arguments and calls the library. Errors a user can cause print
one line, `error: <sentence>`, and exit with status 2.

Each module here adds one group of subcommands; none imports torch until a command runs, so
`--help` and flag errors answer at once."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import StratalmError
from . import lens, models, tasks, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stratalm", description="Build, pretrain and sample Transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, models, tasks, lens):
        group.add_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except StratalmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
