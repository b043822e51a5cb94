"""Errors that reach the user as one line (the CLI prints them and exits 2)."""
from __future__ import annotations

import re

LONG_WORD = 200  # a "word" of user text longer than this is shown cut (a 5,000-digit channel count)


def _clip(match) -> str:
    word = match.group(0)
    return f"{word[:24]}...({len(word):,} characters)"


def one_line(text: str) -> str:
    """``text`` on one line, with every run of more than LONG_WORD non-blank characters cut."""
    return re.sub(rf"\S{{{LONG_WORD + 1},}}", _clip, " ".join(text.split()))


def did_you_mean(value, choices, otherwise: str | None) -> str | None:
    """The hint for an unknown name: the closest of ``choices`` ("did you mean 'res3'?"), else
    ``otherwise`` (e.g. the list of what is allowed)."""
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f"did you mean '{close[0]}'?" if close else otherwise


class UserError(Exception):
    """Bad input from the user: printed as one line, never as a traceback."""

    exit_code = 2


class SpecError(UserError):
    """A spec that cannot be loaded or does not describe a consistent network.

    ``where`` is ``file:line`` when the spec came from a file, ``what`` names the
    offending stage/block/conv, ``hint`` says how to fix it.
    """

    def __init__(self, message: str, *, where: str | None = None, what: str | None = None,
                 hint: str | None = None, path: tuple = ()):
        self.message = message
        self.where = where
        self.what = what
        self.hint = hint
        self.path = path  # spec path, e.g. ("stages", 2, "blocks", 0, "convs", 1)
        super().__init__(str(self))

    def located(self, where: str) -> "SpecError":
        return SpecError(self.message, where=where, what=self.what, hint=self.hint, path=self.path)

    def __str__(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}:")
        if self.what:
            parts.append(f"{self.what}:")
        parts.append(self.message)
        line = " ".join(parts)
        if self.hint:
            line += f" (hint: {self.hint})"
        # One line, always, and short: a message built from user text must not break it.
        return one_line(line)
