"""The `stratalm` command: parses arguments and calls the library. Errors a user can cause print
one line, `error: <sentence>`, and exit with status 2.

Each module here adds one group of subcommands; none imports torch until a command runs, so
`--help` and flag errors answer at once. A training command guards its stop signals from here on,
before anything else is imported (loop/startup.py)."""
from __future__ import annotations

import sys

from ..loop.startup import guard_if_training, release_stop_signals, tell_launcher

guard_if_training(sys.argv)  # first: a signal while the rest imports is answered too

import argparse  # noqa: E402
from typing import Optional  # noqa: E402

from ..errors import StratalmError  # noqa: E402
from ..version import __version__  # noqa: E402
from . import chat, lens, models, prompting, serve, tasks, training  # noqa: E402
from .parsing import HelpFromLine, parse_command_line  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stratalm", description="Build, pretrain and sample Transformer language models.")
    parser.add_argument("--version", action="version", version=f"stratalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HelpFromLine)
    for group in (training, models, chat, prompting, tasks, lens, serve):
        group.add_parsers(sub)
    parser.commands = sub.choices  # name -> the subcommand's parser (its errors show its own usage)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, parser.commands, sys.argv[1:] if argv is None else list(argv))
    try:
        args.func(args)
    except StratalmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        tell_launcher(f"error: {exc}")  # torchrun's summary of failed processes names the reason
        return getattr(exc, "exit_status", 2)  # a run stopped by a signal exits as 128 + the signal (loop/faults.py)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        release_stop_signals()  # a caller in the same process gets its signals back as they were
    return 0


if __name__ == "__main__":
    sys.exit(main())
