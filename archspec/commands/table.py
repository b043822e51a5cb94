"""``archspec table``: the architecture table (the LoCo supplement's Table 1) from specs."""
from __future__ import annotations

import click

from archspec.commands.common import emit, ops_option
from archspec.errors import UserError


@click.command("table")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC [SPEC ...]")
@click.option("--format", "fmt", type=click.Choice(["md", "tex"]), default="md", show_default=True,
              help="GitHub markdown, or a LaTeX table (booktabs, amsmath).")
@click.option("--standalone", is_flag=True,
              help="LaTeX: a complete compilable document instead of a fragment for \\input.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (atomically).")
@ops_option()
def table(specs, fmt, standalone, output, ops):
    """The architecture table of one or more specs, side by side: per stage the output size and
    the block structure in bracket notation, then the head, parameters and FLOPs (2 x MACs of
    --ops, default conv, fc).

    Example: archspec table presnet50 resnet50 --format tex -o table1.tex
    """
    if standalone and fmt != "tex":
        raise UserError("--standalone applies to --format tex only (hint: add --format tex)")
    from archspec.report.arch_table import render_arch_table
    from archspec.spec import load_spec

    loaded = [load_spec(s) for s in specs]
    emit(render_arch_table(loaded, fmt, standalone=standalone, ops=ops), output)


COMMANDS = [table]
