"""``archspec compare``, ``archspec balance`` and ``archspec report``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from archspec.commands.common import SPEC_ARG, emit, measure_option, ops_option, size_option_callback
from archspec.commands.targets import channels_option, is_module_ref, stages_option_callback
from archspec.errors import UserError

STANDALONE_OPTION = click.option("--standalone", is_flag=True,
                                 help="With --format tex: a complete A4 LaTeX document, not a fragment.")


def _check_standalone(standalone: bool, fmt: str) -> None:
    if standalone and fmt != "tex":
        raise UserError("--standalone applies to --format tex only (hint: add --format tex)")


def _band(ctx, param, value):
    if value is None:
        return None
    from archspec.vocabulary import parse_band

    return parse_band(value)  # a UserError: one line, exit 2


def _plot_option():
    return click.option("--plot", "plot_stem", metavar="STEM", type=click.Path(dir_okay=False),
                        help="Also plot the local stages' shares to STEM.png and STEM.pdf.")


def _settings(f):
    for option in reversed([
        click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Images per batch for activation memory (training memory: 2 x batch)."),
        click.option("--size", callback=size_option_callback, metavar="HxW",
                     help="Input resolution (default: each spec's own)."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]), default="float32",
                     show_default=True),
        ops_option(),
    ]):
        f = option(f)
    return f


def _profiles(specs, batch, size, dtype, ops, training=True, stages=None, channels=None):
    """Profile documents of specs or module:callable targets; ``training``: with the
    training-memory plans (specs only; balance shows them)."""
    from archspec.commands.targets import profile_doc

    return [profile_doc(s, batch=batch, size=size, dtype=dtype, ops=ops, training=training,
                        stages=stages if is_module_ref(s) else None, channels=channels if is_module_ref(s) else None)
            for s in specs]


STAGES_OPTION = click.option("--stages", "module_stages", callback=stages_option_callback, metavar="A,B,...",
                             help="module:callable targets: the submodules that are the stages (default: the "
                                  "top-level children).")


def _outputs(f):
    """compare's and balance's output options, in their --help order: --format, -o, --standalone,
    --plot, then --stages and --channels for module:callable targets."""
    for option in reversed([
        click.option("--format", "fmt", type=click.Choice(["table", "md", "tex", "csv", "json"]), default="table",
                     show_default=True),
        click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (atomically)."),
        STANDALONE_OPTION, _plot_option(), STAGES_OPTION, channels_option(),
    ]):
        f = option(f)
    return f


@click.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC SPEC [SPEC...]")
@_settings
@measure_option(help_text="Activation-memory measure compared")
@_outputs
def compare(specs, batch, size, dtype, ops, measure, fmt, output, standalone, plot_stem, module_stages, channels):
    """Per-stage params, FLOPs and activation memory of several specs side by side, absolute and
    as shares, with totals (e.g. archspec compare presnet50 resnet50)."""
    if len(specs) < 2:
        raise click.UsageError("give at least two specs to compare, e.g. 'archspec compare presnet50 resnet50'")
    _check_standalone(standalone, fmt)
    from archspec.report import compare as compare_mod

    profiles = _profiles(specs, batch, size, dtype, ops, training=bool(plot_stem), stages=module_stages,
                         channels=channels)
    lacking = [p["spec"] for p in profiles if measure not in p["total"]["activation_bytes"]]
    if lacking:
        raise UserError(f"--measure {measure} needs a spec; {', '.join(lacking)} has none "
                        "(hint: use saved, output or conv_outputs)")
    doc = compare_mod.compare_docs(profiles, measure)
    if fmt == "table" and not output:
        compare_mod.print_terminal(doc)
    else:
        emit(compare_mod.render(doc, "md" if fmt == "table" else fmt, standalone), output)
    if plot_stem:
        _plot(profiles, measure, None, plot_stem)


def _plot(profiles, measure, band, stem):
    """STEM.png and STEM.pdf, and their caption (every convention) in STEM.caption.md."""
    from archspec.io import write_text_atomic
    from archspec.report.balance import balance_from_profile
    from archspec.report.plots import plot_shares, shares_caption

    docs = [balance_from_profile(p, band, measure) for p in profiles]
    paths = plot_shares(docs, stem)
    caption = Path(str(stem) + ".caption.md")
    write_text_atomic(caption, shares_caption(docs) + "\n")
    click.echo("wrote " + ", ".join(str(p) for p in [*paths, caption]), err=True)


@click.command()
@SPEC_ARG
@click.option("--band", callback=_band, metavar="LO:HI",
              help="Share band in percent for every local stage (default: 0.9x to 1.2x of 100/N; 15:20 for 6).")
@click.option("--check", is_flag=True, help="Exit 1 when any local stage's FLOPs or memory share is outside the band.")
@_settings
@measure_option(help_text="Activation-memory measure of the memory shares")
@_outputs
def balance(spec, band, check, batch, size, dtype, ops, measure, fmt, output, standalone, plot_stem, module_stages,
            channels):
    """Shares of FLOPs, memory and params per local stage, imbalance, the stages outside the
    band, the model-parallel speed bound and the memory saving of GIM and LoCo."""
    _check_standalone(standalone, fmt)
    from archspec.report import balance as balance_mod

    if channels is not None and not is_module_ref(spec):
        raise UserError("--channels is for module:callable targets; a spec declares its own input channels")
    (profile_doc,) = _profiles([spec], batch, size, dtype, ops, stages=module_stages, channels=channels)
    if measure not in profile_doc["total"]["activation_bytes"]:
        raise UserError(f"--measure {measure} needs a spec (hint: a module:callable has "
                        f"{', '.join(profile_doc['total']['activation_bytes'])})")
    doc = balance_mod.balance_from_profile(profile_doc, band, measure)
    measure = doc["settings"]["measure"]
    if fmt == "table" and not output:
        balance_mod.print_terminal(doc)
    else:
        emit(balance_mod.render(doc, "md" if fmt == "table" else fmt, standalone), output)
    if plot_stem:
        _plot([profile_doc], measure, band, plot_stem)
    if check and not doc["balanced"]:
        names = sorted({o["stage"] for o in doc["outside_band"]})
        sys.stdout.flush()  # the report first, then the verdict on stderr
        click.echo(f"check failed: {len(names)} local stage(s) outside the band "
                   f"{doc['settings']['band'][0]:g}:{doc['settings']['band'][1]:g}%: {', '.join(names)}", err=True)
        sys.exit(1)


@click.command()
@SPEC_ARG
@click.option("--against", "against", multiple=True, default=("resnet50",), show_default=True, metavar="SPEC",
              help="Spec(s) to compare with (repeat the option for several).")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Folder to write into (created if missing; only the report's own files are replaced).")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True)
@ops_option()
@measure_option(help_text="Activation-memory measure of every memory column and share")
@click.option("--band", callback=_band, metavar="LO:HI", help="Share band (default: per spec, 0.9x to 1.2x of 100/N).")
@click.option("--standalone", is_flag=True, help="Write the .tex files as complete A4 LaTeX documents, not fragments.")
def report(spec, against, out, batch, ops, measure, band, standalone):
    """Write every table and plot for SPEC against other specs into a folder, with an index.md
    that explains them (e.g. archspec report presnet50 --against resnet50 -o reports/presnet50/)."""
    from archspec.report.bundle import build_report
    from archspec.spec import load_spec

    specs = [load_spec(s) for s in (spec, *against)]
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{out} exists and is not a folder", param_hint="-o")
    written = build_report(specs, folder, batch=batch, ops=ops, measure=measure, band=band, out_label=out,
                           standalone=standalone,
                           progress=lambda what: click.echo(f"{what} ...", err=True))
    click.echo(f"wrote {len(written) + 1} files to {out} (start with {folder / 'index.md'})", err=True)


COMMANDS = [compare, balance, report]
