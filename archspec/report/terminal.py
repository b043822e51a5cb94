"""Rich tables for the terminal."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from archspec.profiling.analytic import stage_params
from archspec.spec.notation import format_block, format_downsample, format_size
from archspec.spec.schema import Spec
from archspec.spec.validate import infer_shapes


def console() -> Console:
    # Wide enough for block notation when output goes to a file or a pipe.
    con = Console()
    return con if con.is_terminal else Console(width=160)


def stage_table(spec: Spec) -> Table:
    shapes = infer_shapes(spec)
    params = stage_params(spec)
    total = sum(params.values())
    table = Table(title=f"{spec.title or spec.name}: input {spec.input_channels}x{format_size(spec.input_size)}",
                  caption="params: exact counts (conv weights and biases, batch-norm weight and bias, fc weights and biases)")
    for col, just in (("stage", "left"), ("output", "right"), ("channels", "right"), ("block structure", "left"),
                      ("params", "right"), ("share", "right")):
        table.add_column(col, justify=just)
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
