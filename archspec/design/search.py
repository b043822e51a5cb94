"""``archspec design``: search the PResNet-like space (``archspec.design.space``) for an N-stage
network whose local stages all take a share of FLOPs and of memory inside a band.

Definitions (the same as ``archspec balance`` and ``archspec profile --paper``):

- shares are per **local stage**: the stem ``conv1`` folds into the first residual stage, the
  head is left out;
- FLOPs: forward FLOPs (2 x MACs) of the op classes ``ops`` (default conv, fc: every command's
  default, archspec.vocabulary; conv, fc, bn, pool is the LoCo paper's Table 6 convention); memory:
  residual block outputs (``block_outputs``: the one measure a closed form gives for thousands of
  candidates a second; ``saved`` needs a trace per network); params: parameters;
- a stage is inside the band LO:HI when LO <= share (%) <= HI for FLOPs and for memory.

Budgets: the network's total forward FLOPs in the same convention, head included (ResNet-50:
8.18 G of conv, fc), and its total parameters, head included (ResNet-50: 25.6 M).

Objective, among designs inside the band and the budgets (lower is better)::

    J = max over stages and over {FLOPs, memory} of |share - 100/N|      (points)
        + SLACK_WEIGHT * (1 - FLOPs / FLOP budget)                         (0.5 points per unused 10%)

so a design balanced to within a point that uses the budget beats a perfectly balanced toy.

Search: ``evaluate`` (archspec.design.evaluate) counts a whole population at once with numpy
(exactly what ``archspec.profiling.analytic.stage_counts`` gives for the written spec; the
tests hold them equal), then a (mu + lambda) evolutionary search from random designs: each
generation mutates (small steps in 1-3 genes) and crosses over (stage-wise) the elite, and
keeps the best distinct designs, ranked by band/budget violation first and J second. Fixed seed, fixed schedule: the
result is reproducible unless ``time_limit`` cuts the search short.
"""
from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from archspec.design import space as S
from archspec.design.evaluate import DESIGN_OPS, Counts, check_counts, evaluate
from archspec.errors import UserError
from archspec.vocabulary import DEFAULT_OPS, default_band

SLACK_WEIGHT = 5.0  # points of J per unused FLOP budget (0.5 points per 10%)
DEFAULT_BUDGET_FLOPS = 8_200_000_000  # ResNet-50: 8.18 GFLOPs (2 x MACs) of conv, fc per image
DEFAULT_BUDGET_PARAMS = 30_000_000  # ResNet-50: 25.6 M, PResNet-50: 25.0 M
MAX_STAGES = 12

# The schedule (fixed, so a seed gives one result); time_limit may cut it short.
INIT = 16_384  # random designs to start from (split between the islands)
ISLANDS = 8  # populations evolving side by side
ELITE = 64  # distinct designs kept per island
OFFSPRING = 4_096  # children per generation (all islands)
MIGRATE = 25  # every so many generations each island receives its neighbour's best
CROSSOVER = 0.25  # fraction of children made by crossover (then mutated)
GENERATIONS = 400  # at most
PATIENCE = 40  # stop this many generations after the best feasible design last improved
NO_DESIGN_EXIT = 1


class NoDesignFound(UserError):
    """The search ended without a design inside the band and the budgets (exit code 1)."""

    exit_code = NO_DESIGN_EXIT


# ---------------------------------------------------------------------------------------------
# input

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_count(text, what: str = "budget") -> int:
    """``4.1G``, ``25M``, ``750k``, ``4.1e9`` or ``4100000000`` -> an integer count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise UserError(f"{what} '{text}' is not a number (hint: e.g. 4.1G, 25M, 750k or 4100000000)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise UserError(f"{what} '{text}' must be at least 1 (hint: e.g. 4.1G, 25M)")
    return int(round(value))


def check_request(n_stages: int, band: tuple[float, float] | None) -> None:
    """One-line errors for a stage count or band no design can meet (band None: the stage count only)."""
    if n_stages < 2:
        raise UserError(f"--stages must be at least 2, got {n_stages} (hint: the band is about sharing "
                        f"the network between local stages)")
    if n_stages > MAX_STAGES:
        raise UserError(f"--stages must be at most {MAX_STAGES}, got {n_stages}")
    if band is None:
        return
    lo, hi = band
    if lo * n_stages > 100 or hi * n_stages < 100:
        raise UserError(f"band {lo:g}:{hi:g} is impossible for {n_stages} stages: the {n_stages} shares add up "
                        f"to 100% (hint: the band must contain 100/{n_stages} = {100 / n_stages:.2f}, e.g. "
                        f"--band {default_band(n_stages)[0]:g}:{default_band(n_stages)[1]:g})")


def check_ops(ops) -> None:
    """The closed-form evaluator counts conv, fc, bn and pool; shares need conv."""
    other = [o for o in ops if o not in DESIGN_OPS]
    if other or "conv" not in ops:
        raise UserError(f"design counts FLOPs of some of {', '.join(DESIGN_OPS)}, conv among them; got "
                        f"--ops {','.join(ops)} (hint: e.g. --ops conv,fc or --ops conv,fc,bn,pool)")


# ---------------------------------------------------------------------------------------------
# scoring


@dataclass
class Scores:
    flops_share: np.ndarray  # (P, N) percent
    memory_share: np.ndarray
    violation: np.ndarray  # 0 inside the band and the budgets
    max_deviation: np.ndarray  # points from 100/N, worst stage and measure
    objective: np.ndarray  # J (meaningful where violation == 0)
    total_macs: np.ndarray
    total_params: np.ndarray


def _shares(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 100 * x / x.sum(axis=1, keepdims=True)


def score(counts: Counts, band, budget_flops: int, budget_params: int) -> Scores:
    lo, hi = band
    fs, ms = _shares(counts.flops), _shares(counts.memory)
    n = fs.shape[1]
    out = lambda x: (np.maximum(lo - x, 0) + np.maximum(x - hi, 0)).sum(axis=1)  # noqa: E731
    macs, params = counts.total_macs, counts.total_params
    use = 2 * macs / budget_flops  # the budget is in FLOPs
    violation = out(fs) + out(ms) + 100 * np.maximum(use - 1, 0) + 100 * np.maximum(params / budget_params - 1, 0)
    dev = np.maximum(np.abs(fs - 100 / n).max(axis=1), np.abs(ms - 100 / n).max(axis=1))
    objective = dev + SLACK_WEIGHT * (1 - np.minimum(use, 1))
    return Scores(fs, ms, violation, dev, objective, macs, params)


# ---------------------------------------------------------------------------------------------
# the search


@dataclass
class Design:
    row: np.ndarray
    n_stages: int
    flops_share: list[float]
    memory_share: list[float]
    params_share: list[float]
    total_macs: int
    total_params: int
    max_deviation: float
    objective: float

    def stages(self) -> list[dict]:
        return S.describe(self.row, self.n_stages)

    def spec(self, name: str = "design", title: str = "", notes: str = ""):
        return S.to_spec(self.row, self.n_stages, name=name, title=title, notes=notes)


@dataclass
class Result:
    n_stages: int
    band: tuple[float, float]
    budget_flops: int
    budget_params: int
    seed: int
    designs: list[Design]  # feasible, best first
    evaluated: int = 0
    seconds: float = 0.0
    generations: int = 0
    cut_off: bool = False  # the time limit ended the search before its schedule did
    best_violation: float = math.inf  # of the best design seen (0 when one was found)
    first_found: float | None = None  # seconds until the first design inside the band and budgets
    ops: tuple = DEFAULT_OPS  # the op classes in FLOPs

    @property
    def rate(self) -> float:
        return self.evaluated / self.seconds if self.seconds else 0.0


def _rank(violation: np.ndarray, objective: np.ndarray) -> np.ndarray:
    return np.lexsort((objective, violation))


def _row_keys(genes: np.ndarray) -> np.ndarray:
    """A 64-bit key per row (a fixed random linear hash, wrapping): equal rows, equal keys."""
    mult = np.random.default_rng(12345).integers(1, 2**62, genes.shape[1], dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        return (genes * mult).sum(axis=1)


def _select(genes: np.ndarray, sc: Scores, keep: int) -> np.ndarray:
    """Indices of the ``keep`` best distinct rows, best first."""
    _, first = np.unique(_row_keys(genes), return_index=True)
    return first[_rank(sc.violation[first], sc.objective[first])][:keep]


def _take(genes: np.ndarray, sc: Scores, idx) -> tuple[np.ndarray, Scores]:
    return genes[idx], Scores(*(getattr(sc, f)[idx] for f in Scores.__dataclass_fields__))


def _join(parts: list[tuple[np.ndarray, Scores]]) -> tuple[np.ndarray, Scores]:
    return (np.concatenate([g for g, _ in parts]),
            Scores(*(np.concatenate([getattr(sc, f) for _, sc in parts]) for f in Scores.__dataclass_fields__)))


def search(n_stages: int, band=None, budget_flops: int = DEFAULT_BUDGET_FLOPS,
           budget_params: int = DEFAULT_BUDGET_PARAMS, top: int = 3, seed: int = 0,
           time_limit: float = 60.0, progress: bool = False, ops=DEFAULT_OPS) -> Result:
    """Search for ``n_stages``-stage designs inside ``band``; the best ``top`` feasible ones.
    ``ops``: the op classes in FLOPs (some of DESIGN_OPS, conv among them); budget_flops in FLOPs.

    ISLANDS populations evolve side by side (evaluated as one batch); every MIGRATE generations
    each receives its neighbour's best design. The search stops PATIENCE generations after the
    best feasible design last improved, after GENERATIONS, or at ``time_limit`` seconds.
    """
    band = default_band(n_stages) if band is None else band
    check_request(n_stages, band)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    check_ops(ops)
    result = Result(n_stages, band, budget_flops, budget_params, seed, [], ops=tuple(ops))

    def scored(genes):
        result.evaluated += len(genes)
        return score(evaluate(genes, n_stages, ops), band, budget_flops, budget_params)

    def best_of(island):
        g, sc = island
        return sc.objective[0] if sc.violation[0] == 0 else math.inf

    pop = S.random_designs(rng, INIT, n_stages)
    sc = scored(pop)
    per = INIT // ISLANDS
    islands = []
    for j in range(ISLANDS):
        g, s_ = _take(pop, sc, slice(j * per, (j + 1) * per))
        islands.append(_take(g, s_, _select(g, s_, ELITE)))
    best, stale = math.inf, 0
    kids_per = OFFSPRING // ISLANDS
    n_x = int(kids_per * CROSSOVER)
    from tqdm import tqdm

    bar = tqdm(total=GENERATIONS, desc=f"design {n_stages} stages", unit="gen", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for gen in range(GENERATIONS):
            if time.perf_counter() - start > time_limit:
                result.cut_off = True
                break
            families = []
            for elite, _ in islands:
                parents = elite[rng.integers(0, len(elite), kids_per)]
                parents[:n_x] = S.crossover(rng, parents[:n_x], elite[rng.integers(0, len(elite), n_x)], n_stages)
                families.append(parents)
            kids = S.mutate(rng, np.concatenate(families), n_stages)
            ksc = scored(kids)
            migrate = (gen + 1) % MIGRATE == 0
            new = []
            for j, island in enumerate(islands):
                parts = [island, _take(kids, ksc, slice(j * kids_per, (j + 1) * kids_per))]
                if migrate:
                    parts.append(_take(*islands[j - 1], slice(0, 1)))
                g, s_ = _join(parts)
                new.append(_take(g, s_, _select(g, s_, ELITE)))
            islands = new
            result.generations = gen + 1
            current = min(best_of(i) for i in islands)
            if current < math.inf and result.first_found is None:
                result.first_found = time.perf_counter() - start
            if current < best - 1e-9:
                best, stale = current, 0
            elif best < math.inf:
                stale += 1
            bar.update(1)
            bar.set_postfix_str(f"best J {best:.3f}" if best < math.inf else
                                f"violation {min(i[1].violation[0] for i in islands):.2f}")
            if stale >= PATIENCE:
                break
    finally:
        bar.close()
    elite, esc = _join(islands)
    elite, esc = _take(elite, esc, _select(elite, esc, len(elite)))
    result.seconds = time.perf_counter() - start
    result.best_violation = float(esc.violation[0])
    counts = evaluate(elite, n_stages)
    ps = _shares(counts.params)
    seen = set()
    for i in np.flatnonzero(esc.violation == 0):
        # designs that count the same (e.g. a strided conv or a resize to the same size) once
        key = (counts.flops[i].tobytes(), counts.memory[i].tobytes(), counts.params[i].tobytes())
        if key in seen:
            continue
        seen.add(key)
        if len(result.designs) == top:
            break
        result.designs.append(Design(
            row=elite[i].copy(), n_stages=n_stages, flops_share=esc.flops_share[i].tolist(),
            memory_share=esc.memory_share[i].tolist(), params_share=ps[i].tolist(),
            total_macs=int(esc.total_macs[i]), total_params=int(esc.total_params[i]),
            max_deviation=float(esc.max_deviation[i]), objective=float(esc.objective[i])))
    return result


# ---------------------------------------------------------------------------------------------
# output


def _block_text(st: dict) -> str:
    if st["kind"] == "bottleneck":
        text = f"bottleneck {st['width']}-{st['out']}"
    else:
        text = f"basic {st['out']}"
    if st["groups"] > 1:
        text += f" g{st['groups']}"
    return text + f" x{st['depth']}"


def design_rows(d: Design) -> list[list[str]]:
    """Per local stage: name, output size, downsampling, blocks, FLOPs %, memory %, params %."""
    stem, *stages = d.stages()
    rows = []
    for i, st in enumerate(stages):
        name = f"conv1+{st['name']}" if i == 0 else st["name"]
        blocks = _block_text(st) if i else f"stem {stem['width']}, {_block_text(st)}"
        rows.append([name, f"{st['size']}x{st['size']}", "maxpool" if i == 0 else st["downsample"], blocks,
                     f"{d.flops_share[i]:.2f}", f"{d.memory_share[i]:.2f}", f"{d.params_share[i]:.2f}"])
    return rows


DESIGN_HEADERS = ["local stage", "size", "downsample", "blocks", "FLOPs %", "mem %", "params %"]


def headline(result: Result) -> list[str]:
    from archspec.vocabulary import conventions_line

    lo, hi = result.band
    return [f"{len(result.designs)} best {result.n_stages}-stage design(s) inside {lo:g}:{hi:g}% per local stage; "
            f"budgets {result.budget_flops / 1e9:.2f} GFLOPs, {result.budget_params / 1e6:.1f} M params; "
            f"seed {result.seed}", conventions_line(result.ops, "block_outputs")]


def design_line(k: int, d: Design, result: Result) -> str:
    flops = 2 * d.total_macs
    return (f"design {k}: max deviation {d.max_deviation:.2f} points from {100 / result.n_stages:.2f}%, "
            f"{flops / 1e9:.3f} GFLOPs ({100 * flops / result.budget_flops:.1f}% of budget), "
            f"{d.total_params / 1e6:.2f} M params, J = {d.objective:.3f}")


def render(result: Result) -> str:
    """The best designs as plain text, one table each (the terminal prints them fitted)."""
    lines = headline(result)
    for k, d in enumerate(result.designs, 1):
        rows = [DESIGN_HEADERS] + design_rows(d)
        widths = [max(len(r[i]) for r in rows) for i in range(len(DESIGN_HEADERS))]
        lines += ["", design_line(k, d, result)]
        lines += ["  " + " ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def spec_text(result: Result, command: str, output: str | None = None) -> str:
    """The best design as spec YAML: title and notes say how it was made and what it costs."""
    from pathlib import Path

    from archspec.spec import dumps, loads

    d = result.designs[0]
    n, (lo, hi) = result.n_stages, result.band
    name = Path(output).stem if output else f"design{n}"
    title = f"Balanced {n}-stage PResNet-like network, generated by `archspec design --stages {n} --seed {result.seed}`"
    shares = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    notes = (f"Generated by: {command}. "
             f"Every local stage (conv1 folds into res2) takes {lo:g}-{hi:g}% of the FLOPs (2 x MACs of "
             f"{', '.join(result.ops)}) and of the memory (residual block outputs). "
             f"FLOPs %: {shares(d.flops_share)}; memory %: {shares(d.memory_share)}; "
             f"params %: {shares(d.params_share)}. "
             f"Total: {2 * d.total_macs:,} FLOPs per image (budget {result.budget_flops:,}), {d.total_params:,} params "
             f"(budget {result.budget_params:,}); max deviation from {100 / n:.2f}%: {d.max_deviation:.2f} points. "
             f"Search: seed {result.seed}, {result.evaluated:,} designs evaluated, {result.generations} generations"
             + (" (cut off by the time limit: a rerun may differ)" if result.cut_off else "") + ".")
    text = dumps(d.spec(name=name, title=title, notes=notes))
    spec = loads(text, source=output or "<design>")
    check_counts(spec, d.row, d.n_stages, result.ops)
    header = f"# {title}.\n# {command}\n"
    return header + text
