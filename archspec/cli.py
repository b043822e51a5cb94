"""The ``archspec`` command line. Heavy modules (torch, rich) are imported inside commands
so that ``archspec --help`` stays fast."""
from __future__ import annotations

import sys

import click

from archspec.commands.common import SPEC_ARG, emit, measure_option, ops_option, size_option_callback
from archspec.commands.targets import channels_option, stages_option_callback
from archspec.errors import UserError, one_line


class _Group(click.Group):
    """Bad input from the user (a bad spec, a bad option) becomes one line on stderr and exit
    code 2, never a traceback or a usage screen."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except UserError as err:
            click.echo(f"error: {one_line(str(err))}", err=True)
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx else "archspec"
            click.echo(f"error: {err.format_message()} (hint: see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)




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


PAPER_REFUSES = ("batch", "dtype", "optimizer", "measure", "module_stages", "channels")


@main.command()
@SPEC_ARG
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per batch (training memory counts 2 views: 2 x batch).")
@click.option("--size", callback=size_option_callback, metavar="HxW", help="Input resolution (default: the spec's, e.g. 224x224).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]), default="float32",
              show_default=True, help="Element type of weights and activations.")
@click.option("--optimizer", type=click.Choice(["sgd", "lars", "adam"]), default="sgd", show_default=True,
              help="Optimizer whose state counts in training memory (sgd/lars: momentum; adam: 2 moments).")
@ops_option()
@measure_option(help_text="Activation-memory measure shown beside the stage output (all are in JSON/CSV)")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "tex", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (atomically).")
@click.option("--standalone", is_flag=True, help="With --format tex: a complete A4 LaTeX document, not a fragment.")
@click.option("--paper", is_flag=True, help="The LoCo paper's Table 6 view instead (shares of block outputs and FLOPs "
                                            "per local stage, the paper's figures and the differences); FLOPs of "
                                            "conv,fc,bn,pool, the paper's, unless --ops is given.")
@click.option("--stages", "module_stages", callback=stages_option_callback, metavar="A,B,...",
              help="For a module:callable SPEC: the submodules that are the stages (default: its top-level children).")
@channels_option()
@click.pass_context
def profile(ctx, spec, batch, size, dtype, optimizer, ops, measure, fmt, output, standalone, paper, module_stages,
            channels):
    """Per-stage parameters, FLOPs (forward and backward), activation memory and peak
    training memory (SimCLR end-to-end, GIM, LoCo), counted on meta tensors.

    Compute is per image; activation memory is at --batch; training memory counts both views
    of a contrastive batch (2 x --batch images). Conventions: docs/profile.md.
    """
    from archspec.commands.common import given
    from archspec.commands.targets import is_module_ref, profile_doc

    if standalone and fmt != "tex":
        raise UserError("--standalone applies to --format tex only (hint: add --format tex)")
    if is_module_ref(spec):
        if paper:
            raise UserError("--paper is the LoCo paper's Table 6 view of a spec; a module:callable has none "
                            "(hint: drop --paper)")
        if measure == "block_outputs":
            raise UserError("--measure block_outputs needs a spec (hint: use saved, output or conv_outputs)")
    from archspec.spec import load_spec

    if paper:
        refused = [f"--{name.replace('module_', '')}" for name in PAPER_REFUSES if given(ctx, name)]
        if refused:
            raise UserError(f"--paper shows shares of block outputs and FLOPs, which {', '.join(refused)} do not "
                            "change (hint: drop them; --ops and --size apply)")
        loaded = load_spec(spec)
        from archspec.profiling.table6 import table6
        from archspec.report import table6_tables
        from archspec.spec.resize import at_input_size
        from archspec.vocabulary import TABLE6_OPS

        doc = table6(at_input_size(loaded, size) if size else loaded, ops=ops if given(ctx, "ops") else TABLE6_OPS)
        if fmt == "table" and not output:
            return table6_tables.print_terminal(doc)
        return emit(table6_tables.render(doc, fmt, standalone), output)
    from archspec.report import profile_tables

    doc = profile_doc(spec, batch=batch, size=size, dtype=dtype, ops=ops, optimizer=optimizer, stages=module_stages,
                      channels=channels)
    if fmt == "table" and not output:
        profile_tables.print_terminal(doc, measure)
        return
    emit(profile_tables.render(doc, "md" if fmt == "table" else fmt, measure, standalone), output)


@main.command()
@SPEC_ARG
@click.option("--memory-budget", metavar="SIZE", help="Training configs: fail if the estimated peak training "
                                                      "memory exceeds SIZE (e.g. 16GiB, 500MB).")
@click.option("--check-data", is_flag=True, help="Training configs: fail if the data root does not exist.")
@click.option("--processes", type=click.Choice(["one", "stage"]), default=None,
              help="Training configs: estimate the peak of every rank of 'archspec train --processes' one "
                   "(default) or stage (one process per local stage); --memory-budget is then per rank.")
@click.option("--schedule", type=click.Choice(["sync", "pipelined"]), default=None,
              help="Training configs, with --processes stage: the schedule (default: the config's 'pipeline').")
@click.option("--data-parallel", "data_parallel", type=click.IntRange(min=1), default=None,
              help="Training configs: replicas, each rank with batch / N images (default 1).")
def validate(spec, memory_budget, check_data, processes, schedule, data_parallel):
    """Check a spec: notation, consistency, and that it compiles to the declared shapes.

    A YAML file with a top-level 'method:' or 'spec:' key is a training config and is checked
    as one: the spec compiles at the data's size, every decoder fits its stage, and the
    estimated peak memory fits --memory-budget (docs/training.md); with --processes stage,
    every rank's.
    """
    from archspec.train.config import is_training_config

    if is_training_config(spec):
        from archspec.commands.train import validate_training_config

        return validate_training_config(spec, memory_budget, check_data, processes or "one", schedule,
                                        data_parallel or 1)
    given = [name for name, value in (("--memory-budget", memory_budget), ("--check-data", check_data),
                                      ("--processes", processes), ("--schedule", schedule),
                                      ("--data-parallel", data_parallel)) if value]
    if given:
        raise UserError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to training configs, not "
                        "to specs (hint: give a training config, e.g. configs/presnet50_loco.yaml)")
    from archspec.spec import load_spec

    loaded = load_spec(spec)
    from archspec.nn.compiler import compile_spec
    from archspec.profiling.analytic import stage_params

    compile_spec(loaded, device="meta", check=True)
    total = sum(stage_params(loaded).values())
    click.echo(f"ok: {loaded.name}: {len(loaded.stages)} stages + head, {total:,} parameters, "
               f"output shapes match the spec")


def _register_area_commands() -> None:
    """Commands of each area live in archspec/commands/<area>.py (click only at import)."""
    import importlib
    import pkgutil

    import archspec.commands as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "common":
            continue
        module = importlib.import_module(f"archspec.commands.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            main.add_command(command)


_register_area_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
