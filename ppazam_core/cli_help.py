"""The ``ppazam`` command's argparse parser class: every command's ``--help`` shows its defaults.

:class:`Parser` is the top-level parser's class; argparse makes each subparser of the same
class as its parent, so the commands that plug-ins add (the harness's ``report`` and
``compare``, through the ``ppazam.commands`` entry points) show defaults too.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, appending ``(default: X)`` to an option's help where the option has
    a default worth saying (not ``None``, ``False`` or empty) and its help does not state one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not _worth_saying(action.default):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        """As argparse's, never breaking a name such as ``two-stage-cnn`` at its hyphens."""
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))

    def add_argument(self, action: argparse.Action) -> None:
        """As argparse's, counting each subcommand's name with its own indent, which argparse
        leaves out (so that ``export-server`` got a line of its own, its help on the next)."""
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS:
            for sub in self._iter_indented_subactions(action):
                self._action_max_length = max(self._action_max_length,
                                              len(self._format_action_invocation(sub)) + self._current_indent)


class Parser(argparse.ArgumentParser):
    """An argument parser whose help (and its subparsers') shows the options' defaults."""

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = DefaultsHelpFormatter,
                 **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def _worth_saying(default: Any) -> bool:
    """Whether a default says something: ``None``, ``False``, an empty list and a suppressed
    default (``--help``'s) do not; ``0`` does."""
    if default is None or default is False or default == argparse.SUPPRESS:
        return False
    return not (isinstance(default, (list, tuple)) and not default)


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1 (``--workers``), else argparse's usage error."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value
