"""The design space of ``archspec design``: PResNet-like networks, one row of integers each.

A network is a 224x224 input, a stem ``conv [7x7, C0, stride 2]`` (112x112), then N residual
stages; the first is entered by ``maxpool 3x3, stride 2`` (56x56, as in PResNet-50), and every
later one is smaller than the one before (down to 4x4), entered by one of

- ``bilinear`` resizing to a chosen smaller size (PResNet-50's res3-res7),
- ``strided_conv``: stride 2 on the first block's 3x3 conv (ResNet "v1.5"), size ceil(s / 2),

Each stage has a block kind (``basic`` or ``bottleneck``), a width (the bottleneck's inner
width, or the basic block's width) from ``WIDTHS``, a bottleneck ratio (output = ratio x
width; 1, 2 or 4; always 1 for basic), a group count (a power of two) and a depth (blocks).
Groups follow PResNet-50's res5-res7: every conv of the stage has ``g`` groups except the last
conv of the first block (the one that sets the stage's channels). The head is global average
pooling and a 1000-way fc, as in PResNet-50.

A population is an int64 matrix, one candidate per row: column 0 is the stem width's index in
``STEM_WIDTHS``; stage i owns columns ``1 + i * NGENES + k`` for the genes in ``GENES``.
``repair`` makes any row valid and canonical (sizes follow from the downsampling, groups divide
the channels they must), so equal networks have equal rows.
"""
from __future__ import annotations

import numpy as np

INPUT_SIZE = 224
STEM_SIZE = 112  # conv 7x7, stride 2, padding 3
FIRST_SIZE = 56  # after max pool 3x3, stride 2, padding 1
MIN_SIZE = 4  # no stage below 4x4
STEM_WIDTHS = np.array([16, 24, 32, 48, 64])
WIDTHS = np.array([16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 144, 160, 192, 224, 256, 288, 320, 384,
                   448, 512, 576, 640, 768, 896, 1024, 1152, 1280, 1536, 1792, 2048])
MAX_RATIO_LOG = 2  # bottleneck ratio 1, 2, 4
MAX_GROUPS_LOG = 8  # up to 256 groups
MIN_GROUP_WIDTH = 4  # channels per group of the inner convs
MAX_DEPTH = 8
FC = 1000

GENES = ("size", "downsample", "kind", "width", "ratio", "groups", "depth")
NGENES = len(GENES)
SIZE, DS, KIND, WIDTH, RATIO, GROUPS, DEPTH = range(NGENES)
# downsample codes
DS_BILINEAR, DS_STRIDED, DS_MAXPOOL = 1, 2, 3
DS_NAMES = {DS_BILINEAR: "bilinear", DS_STRIDED: "strided_conv", DS_MAXPOOL: "maxpool 3x3, stride 2"}
# block kinds
BASIC, BOTTLENECK = 0, 1
KIND_NAMES = {BASIC: "basic", BOTTLENECK: "bottleneck"}


def n_columns(n_stages: int) -> int:
    return 1 + NGENES * n_stages


def col(stage: int, gene: int) -> int:
    return 1 + stage * NGENES + gene


def _floor_log2(x: int) -> int:
    return x.bit_length() - 1


def _lowbit_log2(x: int) -> int:
    """log2 of the largest power of two dividing x."""
    return _floor_log2(x & -x)


# Per width index: log2 of the largest power of two dividing it, and the most groups (log2)
# that keep MIN_GROUP_WIDTH channels per group.
_WIDTH_LOWBIT = np.array([_lowbit_log2(int(w)) for w in WIDTHS])
_WIDTH_MAX_GROUPS = np.array([min(_lowbit_log2(int(w)), _floor_log2(int(w) // MIN_GROUP_WIDTH)) for w in WIDTHS])
_STEM_LOWBIT = np.array([_lowbit_log2(int(w)) for w in STEM_WIDTHS])


def min_size(stage: int, n_stages: int) -> int:
    """The smallest size stage ``stage`` may have: every later stage must still shrink."""
    return MIN_SIZE + (n_stages - 1 - stage)


def repair(genes: np.ndarray, n_stages: int) -> np.ndarray:
    """Make every row a valid, canonical design (in place; also returned)."""
    g = genes
    g[:, 0] = np.clip(g[:, 0], 0, len(STEM_WIDTHS) - 1)
    cin_lowbit = _STEM_LOWBIT[g[:, 0]]
    prev = np.full(len(g), FIRST_SIZE, dtype=np.int64)
    for i in range(n_stages):
        c = lambda k: col(i, k)  # noqa: E731
        if i == 0:
            g[:, c(DS)] = DS_MAXPOOL
            g[:, c(SIZE)] = FIRST_SIZE
        else:
            low = min_size(i, n_stages)
            half = (prev + 1) // 2
            ds = np.where((g[:, c(DS)] == DS_STRIDED) & (half >= low), DS_STRIDED, DS_BILINEAR)
            size = np.where(ds == DS_STRIDED, half, np.clip(g[:, c(SIZE)], low, prev - 1))
            g[:, c(DS)] = ds
            g[:, c(SIZE)] = size
            prev = size
        kind = g[:, c(KIND)] = np.clip(g[:, c(KIND)], BASIC, BOTTLENECK)
        w = g[:, c(WIDTH)] = np.clip(g[:, c(WIDTH)], 0, len(WIDTHS) - 1)
        r = g[:, c(RATIO)] = np.where(kind == BASIC, 0, np.clip(g[:, c(RATIO)], 0, MAX_RATIO_LOG))
        g[:, c(DEPTH)] = np.clip(g[:, c(DEPTH)], 1, MAX_DEPTH)
        limit = np.minimum(np.minimum(_WIDTH_MAX_GROUPS[w], cin_lowbit), MAX_GROUPS_LOG)
        g[:, c(GROUPS)] = np.clip(g[:, c(GROUPS)], 0, limit)
        cin_lowbit = _WIDTH_LOWBIT[w] + r
    return g


def random_designs(rng: np.random.Generator, count: int, n_stages: int) -> np.ndarray:
    """``count`` random rows (repaired). Sizes shrink by a random factor of 0.5-0.95 per stage."""
    g = np.zeros((count, n_columns(n_stages)), dtype=np.int64)
    g[:, 0] = rng.integers(0, len(STEM_WIDTHS), count)
    prev = np.full(count, FIRST_SIZE, dtype=np.int64)
    for i in range(n_stages):
        c = lambda k: col(i, k)  # noqa: E731
        g[:, c(DS)] = rng.choice([DS_BILINEAR, DS_STRIDED], count, p=[0.7, 0.3])
        g[:, c(SIZE)] = np.rint(prev * rng.uniform(0.5, 0.95, count)).astype(np.int64)
        prev = np.maximum(g[:, c(SIZE)], MIN_SIZE)
        g[:, c(KIND)] = rng.integers(0, 2, count)
        g[:, c(WIDTH)] = rng.integers(0, len(WIDTHS), count)
        g[:, c(RATIO)] = rng.integers(0, MAX_RATIO_LOG + 1, count)
        g[:, c(GROUPS)] = rng.integers(0, MAX_GROUPS_LOG + 1, count)
        g[:, c(DEPTH)] = rng.integers(1, MAX_DEPTH + 1, count)
    return repair(g, n_stages)


SCALE_MOVES = 0.1  # fraction of mutations that shift every width

# How far one mutation moves each gene (uniform in -step..step, never 0).
_STEPS = {SIZE: 3, DS: 2, KIND: 1, WIDTH: 2, RATIO: 1, GROUPS: 2, DEPTH: 2}


def mutate(rng: np.random.Generator, parents: np.ndarray, n_stages: int, max_changes: int = 3) -> np.ndarray:
    """Children of ``parents`` (one per row): 1..max_changes genes moved by small steps."""
    kids = parents.copy()
    rows = np.arange(len(kids))
    changes = rng.integers(1, max_changes + 1, len(kids))
    for k in range(max_changes):
        active = rows[changes > k]
        which = rng.integers(0, NGENES * n_stages + 1, len(active))  # a column; 0 is the stem
        gene = np.where(which == 0, -1, (which - 1) % NGENES)
        for g in range(-1, NGENES):
            pick = gene == g
            sel, columns = active[pick], which[pick]
            step = 1 if g < 0 else _STEPS[g]
            delta = rng.integers(1, step + 1, len(sel)) * rng.choice([-1, 1], len(sel))
            if g == DS:  # the other downsampling
                kids[sel, columns] = DS_BILINEAR + DS_STRIDED - kids[sel, columns]
            else:
                kids[sel, columns] += delta
    # A few children scale the whole network: every width one or two steps up or down.
    scale = rng.random(len(kids)) < SCALE_MOVES
    step = rng.integers(1, 3, int(scale.sum())) * rng.choice([-1, 1], int(scale.sum()))
    kids[np.ix_(scale, [col(i, WIDTH) for i in range(n_stages)])] += step[:, None]
    return repair(kids, n_stages)


def crossover(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, n_stages: int) -> np.ndarray:
    """Stage-wise uniform crossover: each stage (and the stem) from ``a`` or ``b``."""
    kids = a.copy()
    take = rng.random((len(a), n_stages + 1)) < 0.5
    mask = np.concatenate([take[:, :1], np.repeat(take[:, 1:], NGENES, axis=1)], axis=1)
    kids[mask] = b[mask]
    return repair(kids, n_stages)


def stage_names(n_stages: int) -> list[str]:
    """conv1 (the stem), then res2 .. res{N+1}, as in PResNet-50."""
    return ["conv1"] + [f"res{i + 2}" for i in range(n_stages)]


def describe(row: np.ndarray, n_stages: int) -> list[dict]:
    """The stages of one row as plain values (the stem first)."""
    out = [{"name": "conv1", "kind": "conv", "width": int(STEM_WIDTHS[row[0]]), "size": STEM_SIZE}]
    for i, name in enumerate(stage_names(n_stages)[1:]):
        v = row[1 + i * NGENES: 1 + (i + 1) * NGENES]
        m = int(WIDTHS[v[WIDTH]])
        out.append({"name": name, "size": int(v[SIZE]), "downsample": DS_NAMES[int(v[DS])],
                    "kind": KIND_NAMES[int(v[KIND])], "width": m, "out": m << int(v[RATIO]),
                    "groups": 1 << int(v[GROUPS]), "depth": int(v[DEPTH])})
    return out


def to_spec(row: np.ndarray, n_stages: int, name: str = "design", title: str = "", notes: str = ""):
    """The Spec of one (repaired) row."""
    from archspec.design.evaluate import stage_convs
    from archspec.spec.schema import BlockGroup, Conv, Downsample, Head, Spec, Stage

    stem, *stages = describe(row, n_stages)
    specs = [Stage(name="conv1", output_size=(STEM_SIZE, STEM_SIZE), downsample=Downsample("strided_conv"),
                   blocks=(BlockGroup("conv", (Conv(7, stem["width"], 1, 2),), 1),))]
    for st in stages:
        ds = {"maxpool 3x3, stride 2": Downsample("maxpool", 3, 2)}.get(st["downsample"], Downsample(st["downsample"]))
        stride = 2 if st["downsample"] == "strided_conv" else 1
        m, c, g, d = st["width"], st["out"], st["groups"], st["depth"]
        first, rest = stage_convs(st["kind"], m, c, g, stride)
        if g == 1 or d == 1:  # one line: a stride acts in the first block only
            groups = (BlockGroup(st["kind"], first, d),)
        else:
            groups = (BlockGroup(st["kind"], first, 1), BlockGroup(st["kind"], rest, d - 1))
        specs.append(Stage(name=st["name"], output_size=(st["size"], st["size"]), downsample=ds, blocks=groups))
    return Spec(name=name, stages=tuple(specs), head=Head("avg", FC, stages[-1]["out"]),
                input_channels=3, input_size=(INPUT_SIZE, INPUT_SIZE), title=title, notes=notes)
