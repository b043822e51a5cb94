"""The public Python API (docs/api.md): load and compile specs, profile a spec or any nn.Module
by named stages, and balance or split that profile. ``import archspec`` exposes these names
without importing torch until one is used."""
from __future__ import annotations

import re
from dataclasses import dataclass

from archspec.errors import UserError, did_you_mean

_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

SPLIT_BY = ("flops", "memory", "params", "mix")


def load(name_or_path):
    """A Spec from a shipped name (``"presnet50"``) or a YAML path."""
    from archspec.spec import load_spec

    return load_spec(str(name_or_path))


def compile(spec, device=None, check: bool = True):  # noqa: A001 - the API's verb, as in the CLI
    """The nn.Module of a spec (or a spec name): stages as named children, ``device="meta"`` for none."""
    from archspec.nn.compiler import compile_spec

    return compile_spec(_as_spec(spec), device=device, check=check)


def profile(model_or_spec, input_size=None, *, stages=None, batch: int = 1, dtype: str = "float32",
            ops=("conv", "fc"), optimizer: str = "sgd", name: str | None = None):
    """The per-stage Profile of a spec (a Spec, a name or a path) or of any nn.Module.

    ``input_size``: (C, H, W), (H, W) or one number; required for a module, the spec's own by
    default. ``stages`` (modules only): submodule names, dotted names, or a callable
    ``stages(model)``; default: the top-level children. A ``"package.module:attribute"`` string
    names a module (an nn.Module, or a zero-argument callable returning one) as on the CLI. MACs are per image; activation bytes at
    ``batch``. A spec's profile has training-memory estimates too (``batch`` contrastive pairs).
    """
    from torch import nn

    ops = _ops(ops)
    if is_module_ref(model_or_spec):
        model_or_spec = load_module(model_or_spec)
    if isinstance(model_or_spec, nn.Module):
        from archspec.profiling.module_profile import profile_module

        if input_size is None:
            raise UserError("profiling a module needs input_size, e.g. input_size=(3, 224, 224)")
        return profile_module(model_or_spec, input_size, stages=stages, batch=batch, dtype=dtype, ops=ops,
                              optimizer=optimizer, name=name)
    from archspec.profiling.module_profile import input_shape
    from archspec.profiling.profiler import profile as profile_spec

    spec = _as_spec(model_or_spec)
    if stages is not None:
        raise UserError("a spec's stages are its own (hint: write local_stage labels in the spec, or use split())")
    size = None
    if input_size is not None:  # (H, W) or one number: the size only; (C, H, W): C must be the spec's
        given = len(input_size) if isinstance(input_size, (tuple, list)) else 1
        channels, *hw = input_shape(input_size)
        if given == 3 and channels != spec.input_channels:
            raise UserError(f"{spec.name} takes {spec.input_channels} input channels, not {channels}")
        size = tuple(hw)
    return profile_spec(spec, batch=batch, size=size, dtype=dtype, optimizer=optimizer, ops=ops)


def balance(profile, band=None, measure: str | None = None) -> dict:
    """The balance document of a Profile (shares per local stage, imbalance, band, speed bound),
    as ``archspec balance --format json`` writes it. ``band``: (lo, hi) percent or "15:20"."""
    from archspec.report.balance import balance_from_profile
    from archspec.vocabulary import parse_band

    if isinstance(band, str):
        band = parse_band(band)
    return balance_from_profile(profile.to_dict(), band=band, measure=measure)


@dataclass(frozen=True)
class SplitResult:
    """An optimal contiguous split of a profile's chain into ``k`` stages."""

    by: str
    labels: tuple[str, ...]  # the chain's links, in order
    cuts: tuple[int, ...]  # 0 = c0 < ... < ck = len(labels)
    stage_costs: tuple[int, ...]
    unit: str

    @property
    def stages(self) -> list[list[str]]:
        return [list(self.labels[a:b]) for a, b in zip(self.cuts, self.cuts[1:])]

    @property
    def shares(self) -> list[float]:
        total = sum(self.stage_costs)
        return [100 * c / total if total else 0.0 for c in self.stage_costs]

    @property
    def speedup_bound(self) -> float:
        """Total cost / largest stage cost: what one worker per stage can gain at most."""
        return sum(self.stage_costs) / max(self.stage_costs) if max(self.stage_costs) else 0.0

    def __str__(self) -> str:
        lines = [f"optimal split by {self.by} ({self.unit}) into {len(self.stage_costs)} stages, "
                 f"bound total/max {self.speedup_bound:.2f}x"]
        for i, (part, cost, share) in enumerate(zip(self.stages, self.stage_costs, self.shares)):
            span = part[0] if len(part) == 1 else f"{part[0]} .. {part[-1]}"
            lines.append(f"  stage{i + 1}: {span} ({len(part)}), {cost:,} ({share:.1f}%)")
        return "\n".join(lines)


def split(profile, k: int, by: str = "flops", batch: int | None = None) -> SplitResult:
    """The optimal split of ``profile`` into ``k`` contiguous stages (exact min-max, ties: least
    sum of squares), as ``archspec split`` computes it. A spec's chain is its blocks (the stem
    folded into the first); a module's chain is its named stages (unattributed ops left out).
    ``by``: flops (forward FLOPs per image, 2 x MACs of the profile's ops), memory (saved bytes at the profile's batch + weight, gradient and optimizer
    state bytes), params, or mix (max of the FLOPs and memory shares)."""
    from archspec.design.split import Costs, optimal_split

    if by not in SPLIT_BY:
        raise UserError(f"unknown split measure '{by}' (hint: use one of {', '.join(SPLIT_BY)})")
    labels, flops, memory, params = _chain_costs(profile, batch)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(labels):
        raise UserError(f"{profile.name} has {len(labels)} links in its chain, so it cannot be cut into {k} stages "
                        f"(hint: use k in 1..{len(labels)})")
    values = {"flops": flops, "memory": memory, "params": params}
    costs = Costs.normalised(flops, memory) if by == "mix" else Costs(values[by])
    best = optimal_split(costs, k)
    per_stage = values["flops" if by == "mix" else by]
    stage_costs = tuple(sum(per_stage[a:b]) for a, b in zip(best.cuts, best.cuts[1:]))
    unit = {"flops": "FLOPs per image", "memory": "bytes", "params": "parameters", "mix": "FLOPs per image"}[by]
    return SplitResult(by, tuple(labels), tuple(best.cuts), stage_costs, unit)


def _chain_costs(profile, batch):
    from archspec.profiling.memory import OPTIMIZER_STATES
    from archspec.profiling.traced import UNATTRIBUTED

    if profile.spec is not None:
        from archspec.design import chain as ch

        chain = ch.build_chain(profile.spec)
        act = ch.saved_bytes(chain, batch or profile.batch, profile.dtype)
        memory = [a + s for a, s in zip(act, ch.state_bytes(chain, profile.optimizer, profile.dtype))]
        return ([b.label for b in chain.blocks], [b.flops(profile.ops) for b in chain.blocks], memory,
                [b.params for b in chain.blocks])
    rows = [r for r in profile.stages if r.name != UNATTRIBUTED]
    # weights + gradients + optimizer state per parameter, at the profile's element size
    state = (2 + OPTIMIZER_STATES[profile.optimizer]) * profile.bytes_per_element
    return ([r.name for r in rows], [2 * profile.macs(r) for r in rows],
            [r.activations["saved"] + state * r.params for r in rows], [r.params for r in rows])


def _as_spec(spec):
    from archspec.spec.schema import Spec

    return spec if isinstance(spec, Spec) else load(spec)


def _ops(ops):
    from archspec.profiling.analytic import OP_CLASSES

    if isinstance(ops, str):
        ops = OP_CLASSES if ops.strip() == "all" else tuple(o.strip() for o in ops.split(",") if o.strip())
    return tuple(ops)


# -- module:callable -----------------------------------------------------------------------------
def is_module_ref(text) -> bool:
    """``"package.module:attribute"`` (what ``archspec profile`` takes besides a spec)."""
    return isinstance(text, str) and _REF.fullmatch(text.strip()) is not None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_module(ref: str):
    """The nn.Module that ``"package.module:attribute"`` names: an nn.Module instance, or a
    zero-argument callable (a builder function, an nn.Module class) returning one. The current
    directory is importable, as under ``python -m``. Every failure is one UserError line."""
    import importlib
    import os
    import sys

    from torch import nn

    ref = ref.strip()
    if not is_module_ref(ref):
        raise UserError(f"'{ref}' is not package.module:attribute (hint: e.g. mypkg.models:build)")
    module_name, attribute = ref.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(f"cannot import '{module_name}' for {ref}: no module named '{exc.name}' (hint: run "
                            f"from the folder that holds it, or put that folder on PYTHONPATH)") from None
        raise UserError(f"importing '{module_name}' failed: {_one_line(exc)}") from None
    except (Exception, SystemExit) as exc:  # the user's module raised while importing: one line
        raise UserError(f"importing '{module_name}' failed: {_one_line(exc)}") from None
    where = module_name
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(part, names, "give a module-level nn.Module or builder function")
            raise UserError(f"'{where}' has no attribute '{part}' (hint: {hint})") from None
        except Exception as exc:
            raise UserError(f"reading {where}.{part} failed: {_one_line(exc)}") from None
        where = f"{where}.{part}"
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise UserError(f"{ref} is a {type(obj).__name__}, not an nn.Module (hint: name an nn.Module instance or "
                        "a zero-argument callable returning one)")
    try:
        built = obj()
    except (Exception, SystemExit) as exc:
        raise UserError(f"calling {ref}() failed: {_one_line(exc)} (hint: name an nn.Module instance or a "
                        "zero-argument callable returning one)") from None
    if not isinstance(built, nn.Module):
        raise UserError(f"{ref}() returned a {type(built).__name__}, not an nn.Module")
    return built
