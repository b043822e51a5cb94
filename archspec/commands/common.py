"""Pieces shared by the command modules: the SPEC argument, option callbacks, output.
Only click is imported here; heavy modules are imported inside commands."""
from __future__ import annotations

import click

from archspec.errors import UserError

SPEC_ARG = click.argument("spec", metavar="SPEC")


def size_option_callback(ctx, param, value):
    """``--size 224`` or ``--size 160x128`` -> (h, w); None when not given."""
    if value is None:
        return None
    from archspec.spec.notation import parse_size

    try:
        return parse_size(value, param.opts[0] if param is not None else "--size")
    except UserError as err:
        raise click.BadParameter(err.message) from None


def ops_option_callback(ctx, param, value):
    """``conv,fc`` or ``all`` -> a tuple of op classes."""
    from archspec.profiling.analytic import OP_CLASSES

    ops = tuple(OP_CLASSES) if value.strip() == "all" else tuple(o.strip() for o in value.split(",") if o.strip())
    bad = [o for o in ops if o not in OP_CLASSES]
    if bad or not ops:
        raise click.BadParameter(f"unknown op class '{bad[0] if bad else value}'; use some of "
                                 f"{','.join(OP_CLASSES)} or 'all'")
    return ops


def emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically and say so on stderr."""
    if output:
        from archspec.io import write_text_atomic

        write_text_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
