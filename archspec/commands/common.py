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


def ops_option(default: str | None = None, what: str = "counted in FLOPs"):
    """``--ops``: the op classes counted in FLOPs, the same option and default on every command."""
    from archspec.vocabulary import DEFAULT_OPS

    return click.option("--ops", default=default or ",".join(DEFAULT_OPS), show_default=True,
                        callback=ops_option_callback, metavar="OPS",
                        help=f"Op classes {what} (FLOPs = 2 x MACs): some of conv,fc,bias,bn,norm,relu,act,add,mul,"
                             f"pool,interp,dropout, or 'all'. The default is the torchvision/fvcore convention "
                             f"(docs/profile.md, 'Conventions').")


def measure_option(choices=None, default: str | None = None, help_text: str = "Activation-memory measure"):
    """``--measure``: the activation-memory measure of memory columns and shares, everywhere."""
    from archspec.vocabulary import DEFAULT_MEASURE, MEASURES

    return click.option("--measure", type=click.Choice(list(choices or MEASURES)), default=default or DEFAULT_MEASURE,
                        show_default=True,
                        help=f"{help_text}: output, conv_outputs, block_outputs (the paper's Table 6) or saved "
                             f"(exact bytes kept for backward; docs/profile.md).")


def given(ctx, name: str) -> bool:
    """Whether the user wrote option ``name`` (not its default)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically and say so on stderr."""
    if output:
        from archspec.io import write_text_atomic

        write_text_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
