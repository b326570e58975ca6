"""Reading a `stratalm` command line: dotted overrides anywhere on it, one usage line and a "did you
mean" for a mistyped command or flag, and help written for the line it answers.

argparse reads `key=value` overrides as a positional list, which takes only the first run of them
on the line; the ones after a flag come back as unrecognised arguments and are gathered here. A flag
it does not know is reported by the subcommand's own parser, so the error shows that subcommand's
usage, not the top-level one.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, Optional

from ..config_fields import did_you_mean

# `train.lr=3e-4`, `--train.lr=3e-4` or `objective=mlm`: what parse_overrides reads.
OVERRIDE = re.compile(r"^(--)?[A-Za-z_][\w-]*(\.[\w-]+)*=")


class HelpFromLine(argparse.ArgumentParser):
    """A subcommand parser whose epilog is written for the line being parsed: `epilog_for(line)`
    (pretrain --help --model bert lists BERT's values, not the dataclass defaults)."""

    epilog_for: Optional[Callable[[list[str]], str]] = None
    line: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self.line = list(args or [])
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        if self.epilog_for is not None:
            self.epilog = self.epilog_for(self.line)
        return super().format_help()


def value_on_line(line: list[str], flag: str, override: Optional[str] = None) -> Optional[str]:
    """The last value given on `line` to `flag` (`--model X` or `--model=X`) or to the dotted
    `override` key (`model.preset=X`), or None."""
    found = None
    for i, item in enumerate(line):
        if item == flag and i + 1 < len(line):
            found = line[i + 1]
        elif item.startswith(flag + "="):
            found = item[len(flag) + 1:]
        elif override and item.lstrip("-").startswith(override + "="):
            found = item.lstrip("-")[len(override) + 1:]
    return found


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings]


def parse_command_line(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser],
                       argv: list[str]) -> argparse.Namespace:
    """Parse `argv` with `parser` (whose subcommands are `commands`). Overrides may sit anywhere;
    anything else unknown exits with status 2, the subcommand's usage and the closest flag."""
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        parser.error(f"unknown command '{argv[0]}'{did_you_mean(argv[0], commands)}; "
                     f"choose one of: {', '.join(commands)}.")
    args, extras = parser.parse_known_args(argv)
    command = commands[args.command]
    takes_overrides = isinstance(getattr(args, "overrides", None), list)
    unknown = []
    for item in extras:
        if takes_overrides and OVERRIDE.match(item):
            args.overrides.append(item)
        else:
            unknown.append(item)
    if unknown:
        first = unknown[0]
        if first.startswith("-"):
            flag = first.split("=", 1)[0]
            command.error(f"unrecognized argument {first}{did_you_mean(flag, _option_strings(command))}.")
        hint = "; give config overrides as dotted keys, e.g. train.lr=3e-4" if takes_overrides else ""
        command.error(f"unrecognized argument '{first}'{hint}.")
    return args
