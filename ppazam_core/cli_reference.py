"""The command-line reference, generated from the argparse definitions:
``python -m ppazam_core.cli_reference > docs/cli-reference.md``.

Every command and subcommand of ``ppazam`` (those that plug-ins add through the
``ppazam.commands`` entry points included) with its one-line help and its ``--help`` text at
a fixed width, so the page does not depend on the terminal it was generated in.
``tests/test_readme.py`` fails when ``docs/cli-reference.md`` is not what this prints.
"""

from __future__ import annotations

import argparse
import functools
from typing import Iterator

from ppazam_core.cli import _parser
from ppazam_core.cli_help import DefaultsHelpFormatter

WIDTH = 100  # columns of the --help texts
COMMAND = "python -m ppazam_core.cli_reference > docs/cli-reference.md"


def reference() -> str:
    """The Markdown page: the ``ppazam --help`` text, then each command's, depth first."""
    parts = ["# Command-line reference\n",
             f"Generated from the argparse definitions by `{COMMAND}`;\ndo not edit it by hand "
             "(`tests/test_readme.py` fails when it is stale). [cli.md](cli.md) explains\nthe commands.\n"]
    for depth, name, summary, parser in _commands(_parser()):
        parser.formatter_class = functools.partial(DefaultsHelpFormatter, width=WIDTH)
        parts.append(f"{'#' * (max(depth, 1) + 1)} `{name}`\n")
        if summary:
            parts.append(f"{summary}\n")
        parts.append(f"```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def _commands(parser: argparse.ArgumentParser, depth: int = 0,
              summary: str = "") -> Iterator[tuple[int, str, str, argparse.ArgumentParser]]:
    """``(depth, prog, one-line help, parser)`` of ``parser`` and of each of its subcommands."""
    yield depth, parser.prog, summary, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, command in action.choices.items():
                yield from _commands(command, depth + 1, helps.get(name) or "")


if __name__ == "__main__":
    print(reference(), end="")
