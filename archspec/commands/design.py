"""``archspec design``: search for an N-stage network whose local stages are balanced."""
from __future__ import annotations

import sys

import click

from archspec.commands.common import ops_option

DEFAULT_FLOPS = "8.2G"
DEFAULT_PARAMS = "30M"


@click.command("design")
@click.option("--stages", "n_stages", type=int, required=True, metavar="N",
              help="Number of local stages (the stem folds into the first).")
@click.option("--band", metavar="LO:HI",
              help="Share of FLOPs and of memory every stage must take, in percent "
                   "(default 0.9x100/N : 1.2x100/N, 15:20 for 6 stages).")
@click.option("--budget-flops", default=DEFAULT_FLOPS, show_default=True, metavar="X",
              help="At most X forward FLOPs (2 x MACs) per image of --ops, head included (ResNet-50: 8.18G of "
                   "conv,fc).")
@click.option("--budget-params", default=DEFAULT_PARAMS, show_default=True, metavar="Y",
              help="At most Y parameters, head included (ResNet-50: 25.6M).")
@ops_option(what="counted in FLOPs (some of conv,fc,bn,pool, conv among them)")
@click.option("--measure", type=click.Choice(["block_outputs"]), default="block_outputs", show_default=True,
              help="Memory measure balanced: block_outputs only (closed form, thousands of candidates a second; "
                   "check a design's 'saved' shares with archspec balance).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, metavar="K", help="Print the K best designs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="S", help="Random seed (same seed, same designs).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SEC", help="Stop searching after SEC seconds.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the best design as a spec (YAML).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
def design(n_stages, band, budget_flops, budget_params, ops, measure, top, seed, time_limit, output, progress):
    """Search a PResNet-like design space for an N-stage network whose every local stage
    takes a share of FLOPs and of memory inside a band, under FLOP and parameter budgets.

    FLOPs are 2 x MACs of --ops (default conv, fc, as every command), memory is residual block
    outputs, per local stage (see docs/design.md). Budgets take suffixes: 8.2G, 25M, 750k. Exit code 1 when no design is found within --time-limit.
    """
    from archspec.design import search as D
    from archspec.vocabulary import default_band, parse_band

    band_text = band
    band = parse_band(band) if band is not None else None
    D.check_request(n_stages, band)  # before default_band, which divides by the stage count
    band = band or default_band(n_stages)
    flops = D.parse_count(budget_flops, "--budget-flops")
    params = D.parse_count(budget_params, "--budget-params")
    if progress is None:
        progress = sys.stderr.isatty()
    D.check_ops(ops)
    result = D.search(n_stages, band, flops, params, top=top, seed=seed, time_limit=time_limit, progress=progress,
                      ops=ops)
    lo, hi = band
    click.echo(f"searched {result.evaluated:,} designs in {result.seconds:.1f} s ({result.rate:,.0f}/s, "
               f"{result.generations} generations{', cut off by --time-limit' if result.cut_off else ''})", err=True)
    if not result.designs:
        raise D.NoDesignFound(
            f"no {n_stages}-stage design with every stage inside {lo:g}:{hi:g}% and within {flops / 1e9:.2f} GFLOPs, "
            f"{params / 1e6:.1f} M params found in {result.seconds:.1f} s (best: {result.best_violation:.2f} "
            f"points outside) (hint: widen --band, raise the budgets, try another --seed or a longer --time-limit)")
    from archspec.report.terminal import print_fitted

    click.echo("\n".join(D.headline(result)))
    for k, d in enumerate(result.designs, 1):
        click.echo("\n" + D.design_line(k, d, result))
        print_fitted(f"design {k}", D.DESIGN_HEADERS, D.design_rows(d), total_row=False, left=(0, 1, 2, 3))
    if output:
        command = (f"archspec design --stages {n_stages}" + (f" --band {band_text}" if band_text else "")
                   + f" --budget-flops {budget_flops} --budget-params {budget_params} --ops {','.join(ops)}"
                   + f" --seed {seed} -o {output}")
        text = D.spec_text(result, command, output)
        from archspec.io import write_text_atomic

        write_text_atomic(output, text)
        click.echo(f"wrote {output}", err=True)


COMMANDS = [design]
