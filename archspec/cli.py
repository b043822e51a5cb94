"""The ``archspec`` command line. Heavy modules (torch, rich) are imported inside commands
so that ``archspec --help`` stays fast."""
from __future__ import annotations

import sys

import click

from archspec.errors import UserError


class _Group(click.Group):
    """Bad input from the user becomes one line on stderr and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)


SPEC_ARG = click.argument("spec", metavar="SPEC")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archspec")
def main():
    """Declarative CNN specs, per-stage profiles and local-learning training.

    SPEC is a name from specs/ (e.g. presnet50, resnet50) or a path to a YAML file.
    """


@main.command("list")
def list_specs():
    """List the named specs that ship with archspec."""
    from archspec.spec import available, load_spec

    for name in available():
        spec = load_spec(name)
        click.echo(f"{name:<12} {spec.title}")


@main.command()
@SPEC_ARG
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the spec in canonical YAML instead of a table.")
def show(spec, as_yaml):
    """Print the stage table: output shape, block structure and parameters per stage."""
    from archspec.spec import dumps, load_spec

    loaded = load_spec(spec)
    if as_yaml:
        click.echo(dumps(loaded), nl=False)
        return
    from archspec.report.terminal import print_stage_table

    print_stage_table(loaded)


@main.command()
@SPEC_ARG
def validate(spec):
    """Check a spec: notation, consistency, and that it compiles to the declared shapes."""
    from archspec.spec import load_spec

    loaded = load_spec(spec)
    from archspec.nn.compiler import compile_spec
    from archspec.profile.analytic import stage_params

    compile_spec(loaded, device="meta", check=True)
    total = sum(stage_params(loaded).values())
    click.echo(f"ok: {loaded.name}: {len(loaded.stages)} stages + head, {total:,} parameters, "
               f"output shapes match the spec")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
