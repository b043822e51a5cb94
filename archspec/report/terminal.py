"""Tables for the terminal that never cut a number.

rich shrinks a table that is wider than the terminal by cutting cells to ``2,3…``. Every table
here is laid out by :func:`print_fitted` instead: each column exactly as wide as its longest cell
(headers wrap at spaces), and when that is wider than the terminal, first the numbers are
abbreviated (``25,029,592`` -> ``25.0M``), then the table wraps: its columns continue in further
parts below, the first column repeated. A line under the table says which of the two happened.
Markdown, LaTeX, CSV and JSON never depend on the width.
"""
from __future__ import annotations

import os
import re
from typing import Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from archspec.profiling.analytic import stage_params
from archspec.spec.notation import format_block, format_downsample, format_size
from archspec.spec.schema import Spec
from archspec.spec.validate import infer_shapes
from archspec.vocabulary import si

PIPE_WIDTH = 160  # when stdout is not a terminal and COLUMNS is not set


def console() -> Console:
    """The terminal's width; COLUMNS when set; PIPE_WIDTH for a file or a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return Console(width=int(columns))
    con = Console()
    return con if con.is_terminal else Console(width=PIPE_WIDTH)


_NUMBER = re.compile(r"^(-?[\d,]+(?:\.\d+)?)(.*)$")


def abbreviate(cell: str) -> str:
    """'25,029,592' -> '25.0M', '3294.02' -> '3294', '0.118' stays; markup and suffixes kept."""
    plain = Text.from_markup(cell).plain
    m = _NUMBER.match(plain.strip())
    if not m:
        return cell
    value = float(m.group(1).replace(",", ""))
    if abs(value) >= 10_000:
        short = si(value)
    elif "." in m.group(1) and abs(value) >= 100:
        short = f"{value:.0f}"
    elif "." in m.group(1) and abs(value) >= 10:
        short = f"{value:.1f}"
    else:
        return cell
    return cell.replace(m.group(1), short, 1)


def _width(text: str) -> int:
    return Text.from_markup(text).cell_len


def _column_width(header: str, cells: list[str]) -> int:
    longest_word = max((len(w) for w in header.split()), default=0)
    return max([longest_word] + [_width(c) for c in cells])


def _table_width(widths: list[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # a space either side of every cell, a rule between and around


def _groups(widths: list[int], width: int, key: int) -> list[list[int]]:
    """Columns in parts that each fit ``width``, the first ``key`` columns in every part."""
    groups, current = [], list(range(key))
    for i in range(key, len(widths)):
        if len(current) > key and _table_width([widths[j] for j in current + [i]]) > width:
            groups.append(current)
            current = list(range(key))
        current.append(i)
    return groups + [current]


def fits(headers: list[str], rows: list[list[str]], width: int) -> bool:
    return _table_width([_column_width(h, [r[i] for r in rows]) for i, h in enumerate(headers)]) <= width


def fit(headers: list[str], rows: list[list[str]], width: int, key: int = 1,
        compact: Callable[[str], str] = abbreviate) -> tuple[list[list[int]], list[list[str]], list[str]]:
    """Column groups (indices; the first ``key`` in every group), the rows to show and the notes
    saying what was done to fit ``width``: numbers abbreviated when that makes the table fit in
    one part, else the table wrapped into parts with every number in full."""
    def widths_of(rs):
        return [_column_width(h, [r[i] for r in rs]) for i, h in enumerate(headers)]

    widths = widths_of(rows)
    if _table_width(widths) <= width:
        return [list(range(len(headers)))], rows, []
    short = [[c if i < key else compact(c) for i, c in enumerate(r)] for r in rows]
    if short != rows and _table_width(widths_of(short)) <= width:
        return [list(range(len(headers)))], short, [
            "numbers abbreviated to fit the terminal: k = 10^3, M = 10^6, G = 10^9; --format md/csv/json "
            "or a wider terminal give them in full"]
    groups = _groups(widths, width, key)
    return groups, rows, [f"the table is wrapped into {len(groups)} parts to fit {width} columns; a wider "
                          "terminal (or COLUMNS=200) shows it in one"]


def print_fitted(title: str, headers: list[str], rows: list[list[str]], *, lines: list[str] = (),
                 total_row: bool = True, left: tuple[int, ...] = (0,), key: int = 1, con: Console | None = None,
                 compact: Callable[[str], str] = abbreviate) -> None:
    """Print ``rows`` (display strings, rich markup allowed) under ``headers`` so that no cell is
    cut at the console's width; ``lines`` (conventions, notes) follow, wrapped as text. The last
    row is the total when ``total_row`` (a rule above it, bold)."""
    con = con or console()
    groups, rows, notes = fit(headers, rows, con.width, key, compact)
    for g, cols in enumerate(groups):
        table = Table(title=title if g == 0 else f"{title} (part {g + 1} of {len(groups)})")
        for i in cols:
            table.add_column(headers[i], justify="left" if i in left else "right",
                             width=_column_width(headers[i], [r[i] for r in rows]), overflow="fold")
        for r, row in enumerate(rows):
            last = total_row and r == len(rows) - 1
            table.add_row(*[row[i] for i in cols], end_section=total_row and r == len(rows) - 2,
                          style="bold" if last else None)
        con.print(table)
    for line in list(lines) + [f"({n})" for n in notes]:
        # prose wraps at words on a terminal; in a pipe or a file a line stays one line (grep-able)
        con.print(line, highlight=False, markup=False, soft_wrap=not con.is_terminal)


def stage_table(spec: Spec) -> Table:
    shapes = infer_shapes(spec)
    params = stage_params(spec)
    total = sum(params.values())
    table = Table(title=f"{spec.title or spec.name}: input {spec.input_channels}x{format_size(spec.input_size)}",
                  caption="params: exact counts (conv weights and biases, batch-norm weight and bias, fc weights and biases)")
    for col, just in (("stage", "left"), ("output", "right"), ("channels", "right"), ("block structure", "left"),
                      ("params", "right"), ("share", "right")):
        # only the block structure (text) may wrap: numbers are never cut
        table.add_column(col, justify=just, no_wrap=col != "block structure")
    for stage, shape in zip(spec.stages, shapes):
        lines = [] if stage.downsample.kind in ("none", "strided_conv") else [format_downsample(stage.downsample)]
        lines += [format_block(g) for g in stage.blocks]
        table.add_row(stage.name, format_size(shape.out_shape[1:]), str(shape.out_shape[0]), "\n".join(lines),
                      f"{params[stage.name]:,}", f"{100 * params[stage.name] / total:.2f}%")
    head = spec.head
    pre = f"{format_downsample(head.downsample)}, " if head.downsample.kind != "none" else ""
    pool = f"{head.pool} pool to {head.pool_size}x{head.pool_size}" if head.pool_size != 1 else f"global {head.pool} pool"
    fcs = ", ".join(f"{n}-d fc" for n in head.fc_layers)
    desc = f"{pre}{pool} -> {spec.features}-d" + (f", {fcs}" if fcs else "")
    if head.dropout:
        desc += f" (dropout {', '.join(f'{p:g}' for p in head.dropout)})"
    table.add_row("head", "1x1", str(head.fc or spec.features), desc, f"{params['head']:,}",
                  f"{100 * params['head'] / total:.2f}%", end_section=True)
    table.add_row("total", "", "", "", f"{total:,}", "100.00%", style="bold")
    return table


def print_stage_table(spec: Spec) -> None:
    console().print(stage_table(spec))
