"""``archspec split``: cut a spec's chain of blocks into K balanced stages (docs/design.md)."""
from __future__ import annotations


import click

from archspec.commands.common import SPEC_ARG, measure_option, ops_option, size_option_callback
from archspec.commands.targets import (DEFAULT_MODULE_SIZE, channels_option, is_module_ref, load_module,
                                      stages_option_callback)
from archspec.errors import UserError, did_you_mean
from archspec.vocabulary import conventions_line, flops_prefix, format_bytes, parse_bytes

BY = ("flops", "memory", "params", "time", "mix")
MAX_THREADS = 1024  # torch.set_num_threads takes a C int; more threads than this helps no CPU
MEASURES = {
    "flops": "forward FLOPs per image (2 x MACs) of --ops",
    "memory": "training memory: activation bytes of --measure at --batch images (saved: exact, traced) "
              "+ weights, gradients and optimizer state",
    "params": "parameters",
    "time": "forward+backward wall time on this machine (CPU, real tensors, --time-batch images, "
            "median of --runs rounds)",
    "mix": "max(FLOPs share, memory share) of the stage (FLOPs as --by flops, memory as --by memory)",
}
NEAR_OPTIMAL = 0.01  # the spec's own split is "already optimal" within 1% of the optimum's largest stage


def _formatter(by: str, scale: int, total: float):
    """(format one cost, the unit's name for headers)."""
    if by == "flops":
        prefix, factor = flops_prefix(total)
        return (lambda v: f"{v / factor:.3f}"), f"{prefix}FLOPs"
    if by == "params":
        return (lambda v: f"{v / 1e6:.2f}"), "M params"
    if by == "memory":
        return format_bytes, "memory"
    if by == "time":
        return (lambda v: f"{v / 1e6:.1f}"), "ms"
    return (lambda v: f"{100 * v / scale:.1f}%"), "mix share"


def verdict(own, best, k: int, own_k: int, fmt, unit: str) -> str:
    """Say plainly how far the spec's own split is from the optimum."""
    if own_k != k:
        return (f"The spec's own split has {own_k} local stages, not {k}: rerun with --stages {own_k} to compare "
                "it with the optimum of the same size.")
    gap = own.bottleneck / best.bottleneck - 1 if best.bottleneck else 0.0
    if gap <= NEAR_OPTIMAL:
        return (f"The spec's own split is already optimal within 1%: its largest stage is {100 * gap:.2f}% above "
                f"the optimum's ({fmt(own.bottleneck)} vs {fmt(best.bottleneck)} {unit}).")
    return (f"The spec's own split is {100 * gap:.1f}% above the optimum: its largest stage costs "
            f"{fmt(own.bottleneck)} against {fmt(best.bottleneck)} {unit}.")


@click.command("split")
@SPEC_ARG
@click.option("--stages", "-k", "stages", type=int, required=True, help="Number of stages K.")
@click.option("--by", default="flops", show_default=True, metavar="|".join(BY),
              help="Stage cost to balance (the largest stage's cost is minimised, exactly).")
@click.option("--memory-cap", metavar="SIZE",
              help="Hard limit on every stage's training memory (activations + weights, gradients, optimizer "
                   "state), e.g. 2GiB or 500MB.")
@ops_option(what="counted in --by flops")
@measure_option(help_text="Activation-memory measure in --by memory/mix and --memory-cap")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per batch for activation memory (--by memory/mix, --memory-cap).")
@click.option("--optimizer", type=click.Choice(["sgd", "lars", "adam"]), default="sgd", show_default=True,
              help="Optimizer whose state counts in training memory.")
@click.option("--time-batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Images per batch when timing blocks (--by time).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed rounds (median) for --by time.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="Torch threads while timing (default: torch's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the split as a spec (YAML) to FILE.")
@click.option("--links", callback=stages_option_callback, metavar="A,B,...",
              help="For a module:callable SPEC: the submodules that form the chain (default: its top-level children).")
@click.option("--size", callback=size_option_callback, metavar="HxW",
              help="For a module:callable SPEC: the input size (default 224x224; channels: --channels).")
@channels_option()
def split(spec, stages, by, memory_cap, ops, measure, batch, optimizer, time_batch, runs, threads, output, links, size,
          channels):
    """Cut SPEC's chain of blocks into K contiguous stages minimising the largest stage's cost,
    and compare with the spec's own stages, a uniform split and a parameter-balanced one.

    The chain: every residual block (each repeat is one), the stem folded into the first, the
    head left out. Costs and conventions: docs/design.md.
    """
    if by not in BY:
        hint = did_you_mean(by, BY, f"use one of {', '.join(BY)}")
        raise UserError(f"unknown --by '{by}' (hint: {hint})")
    if stages < 1:
        raise UserError(f"--stages must be at least 1, got {stages}")
    if is_module_ref(spec):
        return _split_module(spec, stages, by, ops, measure, batch, optimizer, links, size, channels,
                             refused=[o for o, v in (("--memory-cap", memory_cap), ("-o", output)) if v])
    if links is not None or size is not None or channels is not None:
        raise UserError("--links, --size and --channels are for module:callable targets "
                        "(hint: a spec's chain is its blocks)")
    cap = parse_bytes(memory_cap, "--memory-cap") if memory_cap is not None else None

    from archspec.design import chain as ch
    from archspec.design.split import Costs, SplitError, evaluate, optimal_split, uniform_cuts
    from archspec.profiling.profiler import size_overflow_as_error
    from archspec.spec import load_spec

    loaded = load_spec(spec)
    chain = ch.build_chain(loaded)
    n = chain.n
    image_shape = (loaded.input_channels, *loaded.input_size)
    if stages > n:
        raise UserError(f"{loaded.name} has {n} blocks in its chain, so it cannot be cut into {stages} stages "
                        f"(hint: use --stages 1..{n})")

    flops = [b.flops(ops) for b in chain.blocks]
    params = [b.params for b in chain.blocks]
    memory = None
    if by in ("memory", "mix") or cap is not None:
        if measure == "saved":
            with size_overflow_as_error(batch, image_shape, "--batch"):
                act = ch.saved_bytes(chain, batch)
        else:  # analytic: elements per image x batch x 4 bytes (float32)
            act = [b.elems[measure] * batch * 4 for b in chain.blocks]
        memory = [a + s for a, s in zip(act, ch.state_bytes(chain, optimizer))]
    if by == "time":
        values = _timed(chain, time_batch, runs, threads, image_shape)
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

    total = costs.total()
    fmt, unit = _formatter(by, costs.scale, total)
    uses_memory = by in ("memory", "mix") or cap is not None
    lines = [f"{loaded.name}: {n} blocks into {stages} stages by {by}",
             conventions_line(ops if by in ("flops", "mix") else None, measure if uses_memory else None,
                              batch=batch if uses_memory else None, dtype="float32" if uses_memory else None),
             *([f"{by}: {MEASURES[by]}" + (f"; batch {batch}, {optimizer}" if by in ("memory", "mix") else "")]
               if by != "flops" else []),
             ("chain: every residual block; " if loaded.has_residual_blocks else
              "chain: every conv block (the network has no residual blocks); ") +
             (f"the stem ({'+'.join(chain.stem)}) folded into the first; " if chain.stem else "") +
             "head not included"]
    if by == "time":
        lines.append(f"time measured at batch {time_batch}, median of {runs} rounds; total {fmt(sum(values))} ms")
    if cap is not None:
        lines.append(f"memory cap {format_bytes(cap)} per stage (training memory at batch {batch}, {optimizer})")
    click.echo("\n".join(lines))
    from archspec.report.terminal import print_fitted

    # the optimal split, stage by stage
    header = ["stage", "blocks", "n", unit] + (["FLOPs %", "memory %"] if by == "mix" else ["share %"])
    if cap is not None:
        header += ["train mem"]
    rows = []
    for k, (a, b) in enumerate(zip(best.cuts, best.cuts[1:])):
        row = [f"stage{k + 1}", chain.stage_label(a, b), str(b - a), fmt(best.stage_costs[k])]
        if by == "mix":
            row += [f"{100 * sum(flops[a:b]) / sum(flops):.1f}", f"{100 * sum(memory[a:b]) / sum(memory):.1f}"]
        else:
            row += [f"{100 * best.stage_costs[k] / total:.1f}"]
        if cap is not None:
            row += [format_bytes(sum(memory[a:b]))]
        rows.append(row)
    print_fitted("optimal split", header, rows, total_row=False, left=(0, 1),
                 lines=[f"max stage {fmt(best.bottleneck)} {unit}, bound total/max {total / best.bottleneck:.2f}x "
                        "(exact min-max; ties: least sum of squared stage costs)"])

    # against the spec's own stages, a uniform split and a parameter-balanced one
    own_names = chain.own_names()
    candidates = [("optimal", best.cuts), ("spec's own", chain.own_cuts()), ("uniform", uniform_cuts(n, stages)),
                  ("params-balanced", optimal_split(params, stages).cuts)]
    evaluated = [(label, cuts, evaluate(costs, cuts)) for label, cuts in candidates]
    widest = max(ev.k for _, _, ev in evaluated)
    header = ["split", "K", "blocks"] + [f"s{i + 1}" for i in range(widest)] + [f"max {unit}", "total/max"] + (
        ["cap"] if cap is not None else [])
    rows = []
    for label, cuts, ev in evaluated:
        row = [label, str(ev.k), "+".join(str(s) for s in ev.sizes)] + [fmt(v) for v in ev.stage_costs] + \
            [""] * (widest - ev.k) + [fmt(ev.bottleneck), f"{total / ev.bottleneck:.2f}x"]
        if cap is not None:
            worst = max(sum(memory[a:b]) for a, b in zip(cuts, cuts[1:]))
            row.append("ok" if worst <= cap else f"over ({format_bytes(worst)})")
        rows.append(row)
    own = evaluated[1][2]
    print_fitted(f"splits compared ({unit} per stage)", header, rows, total_row=False, left=(0, 2),
                 lines=[f"spec's own: its local stages {' | '.join(own_names)}; uniform: equal block counts; "
                        "params-balanced: least largest stage in parameters (DeepSpeed's 'parameters' partition).",
                        verdict(own, best, stages, own.k, fmt, unit)])

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


def _timed(chain, time_batch, runs, threads, image_shape):
    """--by time on real tensors: a batch too large for this machine's memory (or for a tensor) in one line."""
    from archspec.design import chain as ch
    from archspec.profiling.profiler import size_overflow_as_error

    with size_overflow_as_error(time_batch, image_shape, "--time-batch"):
        try:
            return ch.measure_time(chain, batch=time_batch, runs=runs, threads=threads)
        except RuntimeError as err:
            if "allocate" not in str(err) and "memory" not in str(err).lower():
                raise
            raise UserError(f"timing {time_batch} images of {'x'.join(map(str, image_shape))} needs more memory "
                            f"than this machine has (hint: lower --time-batch)") from None


def _split_module(ref, k, by, ops, measure, batch, optimizer, links, size, channels, refused):
    """A module's chain is its named submodules, costed by the profile (archspec.split)."""
    import archspec

    if refused or by == "time":
        raise UserError(f"{', '.join(refused) or '--by time'} needs a spec (hint: for module:callable use --by "
                        "flops, memory, params or mix)")
    if measure != "saved":
        raise UserError(f"--measure {measure} needs a spec; a module's memory is 'saved' (hint: drop --measure)")
    model = load_module(ref)
    prof = archspec.profile(model, (channels or 3, *(size or DEFAULT_MODULE_SIZE)), stages=links, batch=batch,
                            optimizer=optimizer, name=ref, ops=ops)
    result = archspec.split(prof, k, by=by)
    uses_memory = by in ("memory", "mix")
    click.echo(f"{ref}: {len(result.labels)} named submodules into {k} stages by {by}")
    click.echo(conventions_line(ops if by in ("flops", "mix") else None, "saved" if uses_memory else None,
                                batch=batch if uses_memory else None))
    click.echo("chain: the named submodules in order (ops outside them not included)" +
               (f"; memory: saved bytes + weights, gradients and {optimizer} state" if uses_memory else ""))
    click.echo(str(result))
