"""``archspec split``: cut a spec's chain of blocks into K balanced stages (docs/design.md)."""
from __future__ import annotations

import difflib
import re

import click

from archspec.commands.common import SPEC_ARG, size_option_callback
from archspec.commands.targets import (DEFAULT_MODULE_SIZE, channels_option, is_module_ref, load_module,
                                      stages_option_callback)
from archspec.errors import UserError

BY = ("flops", "memory", "params", "time", "mix")
MEASURES = {
    "flops": "forward MACs per image of conv+fc+bn+pool (the LoCo paper's Table 6 convention)",
    "memory": "training memory: bytes autograd saves for backward at --batch images (exact, traced) "
              "+ weights, gradients and optimizer state",
    "params": "parameters",
    "time": "forward+backward wall time on this machine (CPU, real tensors, --time-batch images, "
            "median of --runs rounds)",
    "mix": "max(FLOPs share, memory share) of the stage (FLOPs as --by flops, memory as --by memory)",
}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'2GiB', '500MB', '1.5 GB', '1073741824' -> bytes (KB/MB/GB: powers of 1000, KiB/MiB/GiB: of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"--memory-cap '{text}' is not a size (hint: write e.g. 2GiB, 500MB or a number of bytes)")
    value = round(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"--memory-cap must be positive, got '{text}'")
    return value


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _formatter(by: str, scale: int):
    if by == "flops":
        return lambda v: f"{v / 1e9:.3f} G"
    if by == "params":
        return lambda v: f"{v / 1e6:.2f} M"
    if by == "memory":
        return format_bytes
    if by == "time":
        return lambda v: f"{v / 1e6:.1f} ms"
    return lambda v: f"{100 * v / scale:.1f}%"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
            for r in rows]


@click.command("split")
@SPEC_ARG
@click.option("--stages", "-k", "stages", type=int, required=True, help="Number of stages K.")
@click.option("--by", default="flops", show_default=True, metavar="|".join(BY),
              help="Stage cost to balance (the largest stage's cost is minimised, exactly).")
@click.option("--memory-cap", metavar="SIZE",
              help="Hard limit on every stage's training memory (activations + weights, gradients, optimizer "
                   "state), e.g. 2GiB or 500MB.")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per batch for activation memory (--by memory/mix, --memory-cap).")
@click.option("--optimizer", type=click.Choice(["sgd", "lars", "adam"]), default="sgd", show_default=True,
              help="Optimizer whose state counts in training memory.")
@click.option("--time-batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Images per batch when timing blocks (--by time).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed rounds (median) for --by time.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads while timing (default: torch's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the split as a spec (YAML) to FILE.")
@click.option("--links", callback=stages_option_callback, metavar="A,B,...",
              help="For a module:callable SPEC: the submodules that form the chain (default: its top-level children).")
@click.option("--size", callback=size_option_callback, metavar="HxW",
              help="For a module:callable SPEC: the input size (default 224x224; channels: --channels).")
@channels_option()
def split(spec, stages, by, memory_cap, batch, optimizer, time_batch, runs, threads, output, links, size, channels):
    """Cut SPEC's chain of blocks into K contiguous stages minimising the largest stage's cost,
    and compare with the spec's own stages, a uniform split and a parameter-balanced one.

    The chain: every residual block (each repeat is one), the stem folded into the first, the
    head left out. Costs and conventions: docs/design.md.
    """
    if by not in BY:
        close = difflib.get_close_matches(str(by), BY, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(BY)}"
        raise UserError(f"unknown --by '{by}' (hint: {hint})")
    if stages < 1:
        raise UserError(f"--stages must be at least 1, got {stages}")
    if is_module_ref(spec):
        return _split_module(spec, stages, by, batch, optimizer, links, size, channels,
                             refused=[o for o, v in (("--memory-cap", memory_cap), ("-o", output)) if v])
    if links is not None or size is not None or channels is not None:
        raise UserError("--links, --size and --channels are for module:callable targets "
                        "(hint: a spec's chain is its blocks)")
    cap = parse_bytes(memory_cap) if memory_cap is not None else None

    from archspec.design import chain as ch
    from archspec.design.split import Costs, SplitError, evaluate, optimal_split, uniform_cuts
    from archspec.spec import load_spec

    loaded = load_spec(spec)
    chain = ch.build_chain(loaded)
    n = chain.n
    if stages > n:
        raise UserError(f"{loaded.name} has {n} blocks in its chain, so it cannot be cut into {stages} stages "
                        f"(hint: use --stages 1..{n})")

    flops = [b.macs for b in chain.blocks]
    params = [b.params for b in chain.blocks]
    memory = None
    if by in ("memory", "mix") or cap is not None:
        act = ch.saved_bytes(chain, batch)
        memory = [a + s for a, s in zip(act, ch.state_bytes(chain, optimizer))]
    if by == "time":
        values = ch.measure_time(chain, batch=time_batch, runs=runs, threads=threads)
    else:
        values = {"flops": flops, "params": params, "memory": memory}.get(by)
    costs = Costs.normalised(flops, memory) if by == "mix" else Costs(values)

    if cap is not None:
        over = [(m, b.label) for m, b in zip(memory, chain.blocks) if m > cap]
        if over:
            m, label = max(over)
            raise UserError(f"block {label} alone needs {format_bytes(m)} of training memory, over --memory-cap "
                            f"{format_bytes(cap)} (hint: raise the cap or lower --batch)")
    try:
        best = optimal_split(costs, stages, limit_values=memory if cap is not None else None, limit=cap)
    except SplitError:
        need = optimal_split(memory, stages).bottleneck
        raise UserError(f"no split of {loaded.name} into {stages} stages keeps every stage within --memory-cap "
                        f"{format_bytes(cap)}: the least possible is {format_bytes(need)} (hint: raise the cap, "
                        f"use more --stages or a smaller --batch)") from None

    fmt = _formatter(by, costs.scale)
    total = costs.total()
    lines = [f"{loaded.name}: {n} blocks into {stages} stages by {by}",
             f"{by}: {MEASURES[by]}" + (f"; batch {batch}, {optimizer}" if by in ("memory", "mix") else ""),
             ("chain: every residual block; " if loaded.has_residual_blocks else
              "chain: every conv block (the network has no residual blocks); ") +
             (f"the stem ({'+'.join(chain.stem)}) folded into the first; " if chain.stem else "") +
             "head not included"]
    if by == "time":
        lines.append(f"time measured at batch {time_batch}, median of {runs} rounds; total {fmt(sum(values))}")
    if cap is not None:
        lines.append(f"memory cap {format_bytes(cap)} per stage (training memory at batch {batch}, {optimizer})")

    # the optimal split, stage by stage
    header = ["stage", "blocks", "n", by] + (["flops %", "memory %"] if by == "mix" else ["share"])
    if cap is not None:
        header += ["train mem"]
    rows = [header]
    for k, (a, b) in enumerate(zip(best.cuts, best.cuts[1:])):
        row = [f"stage{k + 1}", chain.stage_label(a, b), str(b - a), fmt(best.stage_costs[k])]
        if by == "mix":
            row += [f"{100 * sum(flops[a:b]) / sum(flops):.1f}", f"{100 * sum(memory[a:b]) / sum(memory):.1f}"]
        else:
            row += [f"{100 * best.stage_costs[k] / total:.1f}%"]
        if cap is not None:
            row += [format_bytes(sum(memory[a:b]))]
        rows.append(row)
    right = {2, 3, 4, 5, 6, 7}
    lines += ["", "optimal split (exact min-max; ties: least sum of squared stage costs)"] + _table(rows, right)
    lines.append(f"max stage {fmt(best.bottleneck)}, bound total/max {total / best.bottleneck:.2f}x")

    # against the spec's own stages, a uniform split and a parameter-balanced one
    candidates = [("optimal", best.cuts), ("spec's own (" + " | ".join(chain.own_names()) + ")", chain.own_cuts()),
                  ("uniform by block count", uniform_cuts(n, stages)),
                  ("params-balanced (DeepSpeed 'parameters')", optimal_split(params, stages).cuts)]
    rows = [["split", "K", "blocks", f"{by} per stage", "max", "total/max"] + (["cap"] if cap is not None else [])]
    evaluated = [(label, cuts, evaluate(costs, cuts)) for label, cuts in candidates]
    width = max(len(fmt(v)) for _, _, ev in evaluated for v in ev.stage_costs)
    for label, cuts, ev in evaluated:
        row = [label, str(ev.k), "+".join(str(s) for s in ev.sizes),
               " ".join(fmt(v).rjust(width) for v in ev.stage_costs), fmt(ev.bottleneck),
               f"{total / ev.bottleneck:.2f}x"]
        if cap is not None:
            worst = max(sum(memory[a:b]) for a, b in zip(cuts, cuts[1:]))
            row.append("ok" if worst <= cap else f"over ({format_bytes(worst)})")
        rows.append(row)
    lines += [""] + _table(rows, {1, 4, 5})
    click.echo("\n".join(lines))

    if output:
        from archspec.io import write_text_atomic
        from archspec.nn.compiler import compile_spec
        from archspec.spec import dumps, loads

        desc = "; ".join(f"stage{k + 1} = {chain.stage_label(a, b)}"
                         for k, (a, b) in enumerate(zip(best.cuts, best.cuts[1:])))
        new = ch.split_spec(chain, best.cuts, name=f"{loaded.name}_split{stages}_{by}",
                            title=f"{loaded.title or loaded.name}, {stages} stages by {by}",
                            notes=f"archspec split {loaded.name} --stages {stages} --by {by}: {desc}. Spec stages "
                                  f"stageKa, stageKb, ... together are split stage K (the spec format starts "
                                  f"downsampling only at a stage).")
        text = dumps(new)
        compile_spec(loads(text, source=output), device="meta")  # a bug here must not reach a file
        write_text_atomic(output, text)
        groups = ch.stage_groups(new)
        parted = [g for g in groups if len(g) > 1]
        msg = f"wrote {output}: {len(groups)} stages"
        if parted:
            msg += (f" as {len(new.stages)} spec stages (" + ", ".join("+".join(g) for g in parted) +
                    ": the format starts downsampling only at a stage)")
        click.echo(msg, err=True)


COMMANDS = [split]


def _split_module(ref, k, by, batch, optimizer, links, size, channels, refused):
    """A module's chain is its named submodules, costed by the profile (archspec.split)."""
    import archspec

    if refused or by == "time":
        raise UserError(f"{', '.join(refused) or '--by time'} needs a spec (hint: for module:callable use --by "
                        "flops, memory, params or mix)")
    model = load_module(ref)
    prof = archspec.profile(model, (channels or 3, *(size or DEFAULT_MODULE_SIZE)), stages=links, batch=batch,
                            optimizer=optimizer, name=ref, ops=("conv", "fc", "bn", "pool"))
    result = archspec.split(prof, k, by=by)
    click.echo(f"{ref}: {len(result.labels)} named submodules into {k} stages by {by}")
    click.echo("chain: the named submodules in order (ops outside them not included); flops: forward MACs per image "
               "of conv+fc+bn+pool" + (f"; memory: saved bytes at batch {batch} + weights, gradients and {optimizer} "
                                        "state" if by in ("memory", "mix") else ""))
    click.echo(str(result))
