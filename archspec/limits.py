"""Bounds on what archspec reads, checked before the YAML is composed (docs/spec-format.md, "Limits").

A spec or a training config is a few kilobytes of YAML; everything here is far above any real
file and far below what would take a command more than a second to refuse:

- ``MAX_FILE_BYTES``: the file itself (1 MiB). Only regular files are read: a folder, a device
  (``/dev/zero``), a FIFO or a socket is refused by name before a byte is read, and no more than
  the limit is ever read (a file that grows, or lies about its size, stops there).
- ``MAX_DEPTH``: lists and mappings nested inside each other (64; a spec needs 5).
- ``MAX_ALIASES``: ``*alias`` references (1,000); ``MAX_NODES``: YAML values once every alias is
  expanded (100,000), which is what bounds a "billion laughs" file of nested anchors.
- ``MAX_BLOCKS``: blocks of a spec once every ``xN`` repeat is expanded (2,000; ResNet-1001 has
  333 blocks, ResNet-1202 600), and ``MAX_STAGES`` stages (1,000). Every command's cost is linear
  in the expanded blocks; at this bound the slowest, ``profile`` (four traced passes on meta
  tensors, about 5.5 ms a block), takes about 11 s (benchmarks/bench_limits.py).

The YAML scan walks the parser's events (libyaml's when PyYAML has it), which needs no recursion,
so a file nested 100,000 deep is refused at its line like any other, not by a RecursionError.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

MAX_FILE_BYTES = 2**20
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_NODES = 100_000
MAX_BLOCKS = 2_000
MAX_STAGES = 1_000

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))



class LimitError(Exception):
    """A bound broken: ``message``, ``line`` (1-based, or None) and ``hint``; callers re-raise it as
    their own located error (SpecError, ConfigError)."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def file_kind(path) -> str | None:
    """'a folder', 'a character device', ... for what exists at ``path`` and is not a regular file;
    None for a regular file (FileNotFoundError when nothing is there)."""
    mode = os.stat(path).st_mode  # follows links: a link to /dev/zero is a device
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "not a regular file")


def read_text_bounded(path, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most MAX_FILE_BYTES. FileNotFoundError passes through
    (callers word it); everything else is a LimitError whose message leaves the path to the caller's
    ``file:line``."""
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:
        raise LimitError(f"this is {kind}, not a {what}", hint=f"give a path to a {what} (a regular file)")
    too_big = LimitError(f"the file is larger than {_mib(MAX_FILE_BYTES)}, the limit for a {what}",
                         hint=f"a {what} is a few kilobytes of YAML; check that this is the right file")
    if os.stat(path).st_size > MAX_FILE_BYTES:
        raise too_big
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # never more, even if the file grows meanwhile
    except OSError as exc:
        raise LimitError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise too_big
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LimitError(f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 text", line=line,
                         hint=f"a {what} is UTF-8 YAML; is this a binary file?") from None


def read_file(path, what: str, error, missing_hint: str) -> str:
    """read_text_bounded with every failure as ``error`` (SpecError, ConfigError): one located line."""
    path = Path(path)
    try:
        return read_text_bounded(path, what)
    except FileNotFoundError:
        raise error(f"no such {what} file: {path}", hint=missing_hint) from None
    except LimitError as err:
        raise error(err.message, where=f"{path}:{err.line}" if err.line else str(path), hint=err.hint) from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def check_yaml(text: str) -> None:
    """Refuse YAML too deep, with too many aliases, a recursive alias or too large once expanded,
    from the parser's events alone (linear in the text; no node is built). Syntax errors are left to
    the composer, which words them with their line: where libyaml stops at one (its own depth limit
    is 1,000), PyYAML's pure parser scans again, so the bounds are checked up to the error's place
    in the text, and the composer never reaches a depth past MAX_DEPTH."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise LimitError(f"the text is larger than {_mib(MAX_FILE_BYTES)}, the limit for a spec or config")
    fast = getattr(yaml, "CSafeLoader", None)
    # ValueError, OverflowError: PyYAML's pure scanner on a \\U escape above U+10FFFF (the composer words it)
    malformed = (yaml.YAMLError, ValueError, OverflowError)
    try:
        _scan(yaml.parse(text, Loader=fast or yaml.SafeLoader))
    except malformed:
        if fast is None:
            return
        try:
            _scan(yaml.parse(text, Loader=yaml.SafeLoader))
        except malformed:
            return  # malformed: the composer reports it at its line
    except RecursionError:  # not expected from the event parsers; never a traceback
        raise LimitError(f"lists and mappings nest more than {MAX_DEPTH} deep") from None


def _scan(events) -> None:
    """The bounds over one stream of parser events (see check_yaml)."""
    sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
    stack: list[list] = []  # open collections: [anchor, expanded count so far]
    open_anchors: set[str] = set()
    aliases = total = 0

    def done(size: int, anchor, line: int) -> None:
        nonlocal total
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
            grown = stack[-1][1]
        else:
            total += size
            grown = total
        if grown > MAX_NODES:
            raise LimitError(f"the YAML expands to more than {MAX_NODES:,} values (aliases included)", line=line,
                             hint="nested anchors and aliases multiply; write the values out or use fewer")

    for event in events:
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise LimitError(f"lists and mappings nest more than {MAX_DEPTH} deep", line=line,
                                 hint="a spec nests 5 deep; flatten this value")
            stack.append([event.anchor, 1])
            if event.anchor is not None:
                open_anchors.add(event.anchor)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, size = stack.pop()
            open_anchors.discard(anchor)
            done(size, anchor, line)
        elif isinstance(event, yaml.ScalarEvent):
            done(1, event.anchor, line)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise LimitError(f"more than {MAX_ALIASES:,} aliases (*name)", line=line,
                                 hint="write the values out instead of referring to anchors")
            if event.anchor in open_anchors:
                raise LimitError(f"alias *{event.anchor} refers to a value that contains it", line=line,
                                 hint="a value cannot include itself; remove the alias")
            if event.anchor not in sizes:
                raise LimitError(f"alias *{event.anchor} comes before its anchor &{event.anchor}", line=line,
                                 hint=f"define &{event.anchor} first")
            done(sizes[event.anchor], None, line)


__all__ = ["LimitError", "MAX_ALIASES", "MAX_BLOCKS", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_STAGES",
           "check_yaml", "file_kind", "read_file", "read_text_bounded"]
