"""A spec as a chain of blocks (what ``archspec split`` cuts), the blocks' costs, and a split
written back as a spec.

The chain:

- every residual block is one link: each repeat of a block group is its own block, labelled
  ``STAGE.N`` as in the compiled module (``res3.2`` is ``net.res3.block2``);
- a stage's downsampling (max or average pool, bilinear resize) belongs to the block that follows it, and a
  strided conv lives in its block anyway: a cut never separates a resize from what it feeds;
- the stem (the leading stages made only of ``conv`` blocks, such as ``conv1``) is folded into the
  first block after it, as local learning folds it into the first stage (``conv1+res2.1``): the
  first link cannot be cut; a network without residual blocks (VGG) has no stem: each repeat of
  each conv block is a link (write ``conv [3x3, 64] x2`` to make every conv its own link);
- the head (global pool, fc) is not part of the chain.

Costs per block (all integers): ``params``; ``macs`` (forward multiply-accumulates per image of
conv, fc, batch norm and pooling: the LoCo paper's Table 6 convention, ``TABLE6_OPS``);
``saved_bytes`` (exact bytes autograd saves for backward in training mode at a batch, traced on
meta tensors; the input batch is part of the first block); training memory (saved bytes +
weights, gradients and optimizer state of the block's parameters); measured forward+backward time.

``split_spec`` writes a split as a spec with the same layers in the same order. The spec format
puts a stage's downsampling (max pool, bilinear resize) only at the start of a stage, and a stage
that begins with a max pool or a resize may hold no strided conv. A split stage that needs more
(e.g. ``conv1`` followed by ``res2``'s max pool, or a resize between two of its blocks) is
written as consecutive spec stages ``stageKa``, ``stageKb``, ... that carry ``local_stage: stageK``,
so that local learning, ``balance`` and ``profile`` treat them as one local stage (``stage_groups``
reads the grouping back); every other split stage is one spec stage ``stageK``.
"""
from __future__ import annotations

import string
from collections import OrderedDict
from dataclasses import dataclass, replace

from archspec.profiling.analytic import OP_CLASSES, StageCounts
from archspec.spec.kinds import KINDS
from archspec.spec.schema import POOL_DOWNSAMPLES, BlockGroup, Conv, Downsample, Spec, Stage
from archspec.spec.validate import conv_out, pool_out
from archspec.spec.walk import walk
from archspec.vocabulary import TABLE6_OPS

ENTRY_KINDS = POOL_DOWNSAMPLES + ("bilinear",)  # downsampling that runs before a stage's first block


@dataclass(frozen=True)
class Piece:
    """One block of the spec as written: repeat ``repeat`` of group ``group`` of stage ``stage``."""

    stage: int
    group: int
    repeat: int
    number: int  # 1-based block number in its stage (the module ``blockN``)
    label: str  # 'res3.2'
    downsample: str  # 'maxpool' / 'avgpool' / 'bilinear' when the stage's downsampling comes before it, else 'none'
    strided: bool  # a conv of this block has a stride

    @property
    def modules(self) -> tuple[str, ...]:
        """Children of the compiled stage that this piece runs, in order."""
        pre = {"maxpool": ("pool",), "avgpool": ("pool",), "bilinear": ("resize",)}.get(self.downsample, ())
        return pre + (f"block{self.number}",)


@dataclass(frozen=True)
class Block:
    """One link of the chain (the first one may hold the stem's pieces too)."""

    label: str
    pieces: tuple[Piece, ...]
    params: int
    macs: int  # forward MACs per image, TABLE6_OPS
    macs_by_op: dict
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    elems: dict = None  # per image: 'output' (the block's), 'conv_outputs', 'block_outputs' elements

    def flops(self, ops) -> int:
        """Forward FLOPs per image (2 x MACs) of the op classes ``ops``."""
        return 2 * sum(self.macs_by_op[o] for o in ops)


@dataclass(frozen=True)
class Chain:
    spec: Spec
    blocks: tuple[Block, ...]
    stem: tuple[str, ...]  # names of the stages folded into the first block

    @property
    def n(self) -> int:
        return len(self.blocks)

    @property
    def labels(self) -> list[str]:
        return [b.label for b in self.blocks]

    def own_cuts(self) -> tuple[int, ...]:
        """The spec's own local stages as a split of the chain (the stem folded into the first;
        stages sharing a ``local_stage`` label are one)."""
        from archspec.profiling.memory import local_stages

        group_of = {name: gi for gi, group in enumerate(local_stages(self.spec)) for name in group}
        key = [group_of[self.spec.stages[blk.pieces[-1].stage].name] for blk in self.blocks]
        cuts = [0] + [i for i in range(1, self.n) if key[i] != key[i - 1]]
        return tuple(cuts) + (self.n,)

    def own_names(self) -> list[str]:
        """The spec's local stages' names (its ``local_stage`` labels where given)."""
        from archspec.profiling.memory import local_stage_name

        names, stages = [], self.spec.stages
        for a, b in zip(self.own_cuts(), self.own_cuts()[1:]):
            held = sorted({p.stage for blk in self.blocks[a:b] for p in blk.pieces})
            names.append(local_stage_name(self.spec, [stages[s].name for s in held]))
        return names

    def stage_label(self, a: int, b: int) -> str:
        """'conv1+res2.1 .. res3.2' for the blocks a..b-1."""
        if b - a == 1:
            return self.blocks[a].label
        return f"{self.blocks[a].label} .. {self.blocks[b - 1].label}"


def build_chain(spec: Spec) -> Chain:
    """The chain of ``spec`` with the analytic costs of every block (no torch)."""
    plain = not spec.has_residual_blocks  # no residual blocks (VGG): every conv block is a link, no stem
    stem_count = 0
    for stage in spec.stages[:-1] if not plain else ():
        if all(not KINDS[g.kind].residual for g in stage.blocks):
            stem_count += 1
        else:
            break
    raw = []  # (piece, counts, in_shape) per block, its stage's entry downsampling in it
    entry = None
    for unit in walk(spec):
        if unit.part == "entry":
            entry = unit
            continue
        if unit.part == "head":
            break
        stage = spec.stages[unit.stage]
        counts = StageCounts(stage.name)
        in_shape = unit.shape_in
        if entry is not None:
            counts.add(entry)
            in_shape, entry = entry.shape_in, None
        counts.add(unit)
        group = stage.blocks[unit.group]
        ds = stage.downsample.kind if unit.number == 1 and stage.downsample.kind in ENTRY_KINDS else "none"
        piece = Piece(unit.stage, unit.group, unit.repeat, unit.number, f"{stage.name}.{unit.number}", ds,
                      unit.repeat == 0 and any(cv.stride > 1 for cv in group.convs))
        raw.append((piece, counts, in_shape, unit.shape_out))
    stem_pieces = sum(1 for r in raw if r[0].stage < stem_count)
    if stem_pieces == len(raw):  # nothing after the stem: no folding
        stem_count, stem_pieces = 0, 0
    groups = [raw[: stem_pieces + 1]] + [[r] for r in raw[stem_pieces + 1:]]
    blocks = []
    for grp in groups:
        macs = {op: sum(r[1].macs[op] for r in grp) for op in OP_CLASSES}
        pieces = tuple(r[0] for r in grp)
        stem_names = list(dict.fromkeys(spec.stages[p.stage].name for p in pieces[:-1]))
        label = "+".join(stem_names + [pieces[-1].label])
        elems = {"output": grp[-1][1].output_elems, "conv_outputs": sum(r[1].conv_output_elems for r in grp),
                 "block_outputs": sum(r[1].block_output_elems for r in grp)}
        blocks.append(Block(label, pieces, sum(r[1].params for r in grp), sum(macs[o] for o in TABLE6_OPS), macs,
                            grp[0][2], grp[-1][3], elems))
    return Chain(spec, tuple(blocks), tuple(s.name for s in spec.stages[:stem_count]))


# -- measured costs (torch imported here only) --------------------------------------------------
def _piece_modules(net, chain: Chain) -> "OrderedDict[str, tuple[int, object]]":
    """'res2.1:pool' -> (block index, module), in execution order."""
    out = OrderedDict()
    for bi, block in enumerate(chain.blocks):
        for p in block.pieces:
            stage = getattr(net, chain.spec.stages[p.stage].name)
            for child in p.modules:
                out[f"{p.label}:{child}"] = (bi, getattr(stage, child))
    return out


def saved_bytes(chain: Chain, batch: int, dtype: str = "float32") -> list[int]:
    """Exact bytes autograd saves for backward per block, training mode, ``batch`` images
    (traced on meta tensors: no memory; parameters and buffers excluded, each storage once)."""
    import torch

    from archspec.nn.compiler import StagedNet
    from archspec.profiling.profiler import DTYPES
    from archspec.profiling.traced import trace

    spec, torch_dtype = chain.spec, DTYPES[dtype]
    with torch.device("meta"):
        net = StagedNet(spec).to(torch_dtype)
    pieces = _piece_modules(net, chain)
    mapping = OrderedDict((key, mod) for key, (_, mod) in pieces.items())
    mapping["head"] = net.head  # traced so that its tensors are not charged to the last block
    x = torch.empty(batch, spec.input_channels, *spec.input_size, device="meta", dtype=torch_dtype)
    traced = trace(net, mapping, x, backward=False)
    out = [0] * chain.n
    for key, (bi, _) in pieces.items():
        out[bi] += traced[key].saved_bytes
    return out


def state_bytes(chain: Chain, optimizer: str = "sgd", dtype: str = "float32") -> list[int]:
    """Weights + gradients + optimizer state of each block's parameters, in bytes."""
    from archspec.profiling.memory import OPTIMIZER_STATES

    per_param = _bytes_per_element(dtype) * (2 + OPTIMIZER_STATES[optimizer])
    return [b.params * per_param for b in chain.blocks]


def _bytes_per_element(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}[dtype]


def measure_time(chain: Chain, batch: int = 2, runs: int = 3, seed: int = 0, threads: int | None = None) -> list[int]:
    """Forward + backward wall time of each block in nanoseconds: real tensors on the CPU,
    training mode, ``batch`` images, the median of ``runs`` rounds after one warm-up round (a
    round runs every block once). Each block runs alone on its recorded input (which needs a
    gradient, except the image batch), from a gradient of ones on its output. ``threads``: torch's
    intra-op threads while timing (default: as set)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    from archspec.profiling.norm_checks import lenient_norms

    try:  # lenient_norms: batch 1 on a 1x1 map times like any other size (the statistic is not used)
        with lenient_norms():
            return _measure_time(chain, batch, runs, seed)
    finally:
        torch.set_num_threads(previous)


def _measure_time(chain: Chain, batch: int, runs: int, seed: int) -> list[int]:
    import statistics
    import time

    import torch

    from archspec.nn.compiler import compile_spec

    spec = chain.spec
    torch.manual_seed(seed)
    net = compile_spec(spec, check=False)
    net.train()
    pieces = _piece_modules(net, chain)
    per_block: list[list] = [[] for _ in range(chain.n)]
    for bi, mod in pieces.values():
        per_block[bi].append(mod)
    x = torch.randn(batch, spec.input_channels, *spec.input_size)
    inputs = []
    with torch.no_grad():
        for mods in per_block:
            inputs.append(x)
            for m in mods:
                x = m(x)
    samples: list[list[int]] = [[] for _ in range(chain.n)]
    for _ in range(runs + 1):  # round robin, so that a busy moment hits every block alike
        for bi, mods in enumerate(per_block):
            inp = inputs[bi].detach().clone().requires_grad_(bi > 0)
            start = time.perf_counter_ns()
            y = inp
            for m in mods:
                y = m(y)
            y.backward(torch.ones_like(y))
            samples[bi].append(time.perf_counter_ns() - start)
    times = [int(statistics.median(s[1:])) for s in samples]  # the first round warms up
    return times


# -- a split written back as a spec -------------------------------------------------------------
def _letters(i: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa', ..."""
    text = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        text = string.ascii_lowercase[r] + text
    return text


def _unstrided(convs: tuple[Conv, ...]) -> tuple[Conv, ...]:
    return tuple(replace(c, stride=1) for c in convs)


def split_spec(chain: Chain, cuts, *, name: str | None = None, title: str | None = None,
               notes: str | None = None, prefix: str = "stage") -> Spec:
    """The spec of ``chain`` with stage boundaries at ``cuts`` (0 = c0 < ... < cK = n): the same
    layers in the same order, so the same parameters, FLOPs and function. Split stage k is the
    spec stage ``stage{k}``, or ``stage{k}a``, ``stage{k}b``, ... where the format needs it."""
    spec = chain.spec
    cuts = tuple(cuts)
    if cuts[0] != 0 or cuts[-1] != chain.n or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts {cuts} do not cut {chain.n} blocks into non-empty stages")
    owner = []  # split stage of every piece, in order
    pieces = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        for block in chain.blocks[a:b]:
            for p in block.pieces:
                pieces.append(p)
                owner.append(k)

    parts: list[tuple[int, list[Piece]]] = []  # (split stage, pieces) per spec stage
    for k, p in zip(owner, pieces):
        if parts and parts[-1][0] == k:
            current = parts[-1][1]
            entry = current[0].downsample
            if p.downsample in ENTRY_KINDS or (p.strided and entry in ENTRY_KINDS):
                parts.append((k, [p]))
            else:
                current.append(p)
        else:
            parts.append((k, [p]))

    counts: dict[int, int] = {}
    for k, _ in parts:
        counts[k] = counts.get(k, 0) + 1
    seen: dict[int, int] = {}
    stages = []
    h, w = spec.input_size
    for k, plist in parts:
        idx = seen.get(k, 0)
        seen[k] = idx + 1
        stage_name = f"{prefix}{k + 1}" + (_letters(idx) if counts[k] > 1 else "")
        first = plist[0]
        orig = spec.stages[first.stage]
        if first.downsample in POOL_DOWNSAMPLES:
            ds = orig.downsample
            h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
        elif first.downsample == "bilinear":
            ds = Downsample("bilinear")
            h, w = orig.output_size
        elif any(p.strided for p in plist):
            ds = Downsample("strided_conv")
        else:
            ds = Downsample("none")
        groups: list[BlockGroup] = []
        run: list[Piece] = []
        for p in plist + [None]:
            if run and (p is None or (p.stage, p.group) != (run[0].stage, run[0].group)):
                group = spec.stages[run[0].stage].blocks[run[0].group]
                convs = group.convs if run[0].repeat == 0 else _unstrided(group.convs)
                groups.append(replace(group, convs=convs, repeat=len(run)))
                run = []
            if p is not None:
                run.append(p)
                group = spec.stages[p.stage].blocks[p.group]
                for conv in group.convs:
                    stride = conv.stride if p.repeat == 0 else 1
                    h, w = conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride)
        stages.append(Stage(name=stage_name, output_size=(h, w), blocks=tuple(groups), downsample=ds,
                            local_stage=f"{prefix}{k + 1}" if counts[k] > 1 else None))
    return Spec(name=name or spec.name, stages=tuple(stages), head=spec.head, input_channels=spec.input_channels,
                input_size=spec.input_size, title=spec.title if title is None else title,
                notes=spec.notes if notes is None else notes)


def stage_groups(spec: Spec, prefix: str = "stage") -> list[list[str]]:
    """Spec stages grouped into the split stages ``split_spec`` wrote (``stage2a``, ``stage2b``
    with ``local_stage: stage2`` -> one group): the spec's local stages."""
    from archspec.profiling.memory import local_stages

    return local_stages(spec)


__all__ = ["Block", "Chain", "Piece", "build_chain", "measure_time", "saved_bytes", "split_spec",
           "stage_groups", "state_bytes"]
