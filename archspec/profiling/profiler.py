"""Per-stage profile of a spec: parameters, forward/backward compute, activation memory and
peak training memory. ``profile(spec, ...)`` returns a Profile; ``Profile.to_dict()`` is the
documented JSON document (schema ``archspec.profile/1``, docs/profile.md)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from archspec.errors import UserError
from archspec.nn.compiler import StagedNet
from archspec.profiling.analytic import OP_CLASSES, stage_counts
from archspec.nn.decoders import DecoderConfig
from archspec.profiling.memory import METHODS, OPTIMIZER_STATES, MemoryPlan, local_stage_name, local_stages
from archspec.profiling.step_memory import step_peak
from archspec.profiling.traced import trace
from archspec.spec.resize import at_input_size
from archspec.spec.schema import Spec
from archspec.vocabulary import DEFAULT_OPS  # one default for every command

SCHEMA = "archspec.profile/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
ACTIVATION_MEASURES = {
    "output": "the stage's output feature map",
    "conv_outputs": "sum of every conv output in the stage (projection shortcuts included)",
    "block_outputs": "sum of every residual block's output in the stage (reproduces the paper's Table 6 memory column)",
    "saved": "exact bytes autograd saves for backward in training mode (parameters and buffers excluded, "
             "each storage counted once, the input batch included in the first stage)",
}


@dataclass
class StageProfile:
    name: str
    output_shape: tuple  # (channels, height, width) or (features,) for the head
    params: int
    forward: dict[str, int]  # MACs by op class, per image
    backward: dict[str, int]
    activations: dict[str, int]  # bytes at the profile's batch, by measure


def _summed(name: str, rows: list[StageProfile], output_shape) -> StageProfile:
    """Several stages' rows as one (a local stage, the total)."""
    def add(dicts):
        return {k: sum(d[k] for d in dicts) for k in dicts[0]}

    return StageProfile(name, output_shape, sum(r.params for r in rows), add([r.forward for r in rows]),
                        add([r.backward for r in rows]), add([r.activations for r in rows]))


@dataclass
class Profile:
    """A per-stage profile of a spec, or of any nn.Module by named stages (``spec`` is None then,
    and ``source`` names the module; archspec.profiling.module_profile)."""

    spec: Spec | None
    batch: int
    dtype: str
    optimizer: str
    ops: tuple[str, ...]
    stages: list[StageProfile]
    memory: dict = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)
    source: dict = field(default_factory=dict)  # modules: name, title, input_shape
    unknown: dict = field(default_factory=dict)  # stage -> {aten op: calls} the counter does not know

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.source["name"]

    @property
    def title(self) -> str:
        return self.spec.title if self.spec is not None else self.source.get("title", "")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.spec.input_size) if self.spec is not None else tuple(self.source["input_shape"][1:])

    @property
    def measures(self) -> dict:
        """The activation measures this profile has, with their definitions."""
        return {m: measure_text(m, self.spec) for m in self.stages[0].activations}

    def local_stages(self) -> list[StageProfile]:
        """One row per local stage (named by its label, Spec.local_stages): the sums of its stages'
        rows, with the output shape of its last stage. The head is not in a local stage."""
        by_name = {r.name: r for r in self.stages}
        rows = []
        for group in self.groups:
            members = [by_name[n] for n in group if n in by_name]
            rows.append(_summed(local_stage_name(self.spec, group), members, members[-1].output_shape))
        return rows

    def to_frame(self, local: bool = False):
        """One row per stage (``local``: per local stage) and the total (pandas): params, MACs and
        FLOPs forward and backward per image (the profile's ops), activation bytes per measure at the
        profile's batch."""
        import pandas as pd

        rows = []
        for row in (self.local_stages() if local else self.stages) + [self.total()]:
            fwd, bwd = self.macs(row), self.macs(row, backward=True)
            rows.append({"stage": row.name, "params": row.params, "fwd_macs": fwd, "fwd_flops": 2 * fwd,
                         "bwd_macs": bwd, "bwd_flops": 2 * bwd,
                         **{f"{m}_bytes": v for m, v in row.activations.items()}})
        return pd.DataFrame(rows).set_index("stage")

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent) + "\n"

    @property
    def bytes_per_element(self) -> int:
        return torch.empty(0, dtype=DTYPES[self.dtype]).element_size()

    def macs(self, row: StageProfile, backward: bool = False) -> int:
        counts = row.backward if backward else row.forward
        return sum(counts[c] for c in self.ops)

    def total(self) -> StageProfile:
        return _summed("total", self.stages, ())

    def to_dict(self) -> dict:
        total = self.total()

        def record(row: StageProfile) -> dict:
            fwd, bwd = self.macs(row), self.macs(row, backward=True)
            return {
                "name": row.name,
                "output_shape": list(row.output_shape),
                "params": row.params,
                "params_share": row.params / total.params if total.params else 0.0,
                "forward": {"macs": fwd, "flops": 2 * fwd, "share": fwd / self.macs(total) if self.macs(total) else 0.0,
                            "macs_by_op": dict(row.forward)},
                "backward": {"macs": bwd, "flops": 2 * bwd, "macs_by_op": dict(row.backward)},
                "activation_bytes": dict(row.activations),
                "activation_share": {m: (row.activations[m] / total.activations[m] if total.activations[m] else 0.0)
                                     for m in row.activations},
            }

        doc = {
            "schema": SCHEMA,
            "spec": self.name,
            "title": self.title,
            "settings": {"batch": self.batch, "input_size": list(self.input_size), "dtype": self.dtype,
                         "bytes_per_element": self.bytes_per_element, "optimizer": self.optimizer,
                         "ops": list(self.ops)},
            "conventions": conventions(self.ops, self.spec, self.measures),
            "stages": [record(r) for r in self.stages],
            "total": record(total),
        }
        if self.groups:
            doc["local_stage_names"] = [local_stage_name(self.spec, g) for g in self.groups]
        if self.spec is None:
            doc["source"] = {"module": self.source["name"], "input_shape": list(self.source["input_shape"])}
            doc["local_stages"] = self.groups
            doc["training_memory"] = None
        if self.unknown:
            doc["unknown_ops"] = self.unknown
        if self.memory:
            simclr = self.memory["simclr"].total
            doc["training_memory"] = {
                "images": 2 * self.batch,
                "local_stages": self.groups,
                "methods": {m: {**p.as_dict(), "saving_vs_simclr": simclr / p.total} for m, p in self.memory.items()},
            }
        return doc


def measure_text(measure: str, spec: Spec | None = None) -> str:
    if measure == "block_outputs" and spec is not None and not spec.has_residual_blocks:
        return "sum of every conv block's output in the stage (the network has no residual blocks to count)"
    return ACTIVATION_MEASURES[measure]


MODULE_TRAINING_MEMORY = ("not estimated for a module (training_memory is null): the peak-memory model needs a "
                          "spec (the runner's step with a decoder per local stage); 'saved' is the exact "
                          "activation part of a training step")


def local_stage_text(spec: Spec | None) -> str:
    if spec is None:
        return "the named stages, one each; ops outside them (unattributed) and nothing else are left out"
    if not spec.has_residual_blocks:
        return "every spec stage is its own (the network has no residual blocks, so no stem to fold); " \
               "the head is left out"
    return "a leading all-conv stem folds into the first residual stage; the head is left out"


def conventions(ops, spec: Spec | None = None, measures: dict | None = None) -> dict:
    out = {
        "mac": "one multiply-accumulate; conv: Cout*Hout*Wout*(Cin/groups)*k*k, fc: in*out; bias: 1 per output "
               "element of a conv or fc with a bias; bn, norm, relu, act (other activations), add, mul, dropout: 1 per "
               "element; max and average pools: k*k per output, global and adaptive pools: 1 per input element; "
               "bilinear: 4 per output element",
        "flop": "2 x MAC",
        "ops_counted": list(ops),
        "all_ops": list(OP_CLASSES),
        "backward": "traced from the autograd graph from a gradient of ones on the stage chain's output: conv and fc "
                    "grad input + grad weight exactly (no grad input for the first conv), bias gradients 1 per "
                    "output-gradient element, bn and norm 2 per element, relu and act 1, mul and dropout 1 per "
                    "product, gradient accumulation 1, pooling 1 per input element, bilinear 4 per output element",
        "compute": "per image (traced at the batch of the settings and divided by it: every count is linear in it)",
        "memory": "activation bytes for the batch of the settings; training memory for 2 views x batch images",
        "activation_measures": measures if measures is not None else ACTIVATION_MEASURES,
        "local_stages": local_stage_text(spec),
    }
    if spec is None:  # a module's profile: no spec to fold a stem from, no training-memory model
        out["memory"] = "activation bytes for the batch of the settings"
        out["training_memory"] = MODULE_TRAINING_MEMORY
    return out


def check_settings(batch: int, dtype: str, optimizer: str, ops) -> None:
    """One-line errors for settings no profile can have."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a positive integer, got {batch!r}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}' (hint: use one of {', '.join(DTYPES)})")
    if optimizer not in OPTIMIZER_STATES:
        raise UserError(f"unknown optimizer '{optimizer}' (hint: use one of {', '.join(OPTIMIZER_STATES)})")
    unknown = [o for o in ops if o not in OP_CLASSES]
    if unknown:
        raise UserError(f"unknown op class {unknown[0]!r} (hint: use some of {', '.join(OP_CLASSES)} or 'all')")


def is_size_overflow(exc: BaseException) -> bool:
    """PyTorch refusing a shape whose element count (or one dimension) exceeds a 64-bit integer."""
    return isinstance(exc, (RuntimeError, TypeError, ValueError)) and "overflow" in str(exc).lower()


SIZE_KNOBS = "the batch or the input size"


def size_overflow_error(batch: int, image_shape, knobs: str = SIZE_KNOBS) -> UserError:
    shape = "x".join(str(d) for d in image_shape)
    return UserError(f"batch {batch} of {shape} images makes tensors with more elements than a 64-bit size holds "
                     f"(hint: lower {knobs})")


@contextlib.contextmanager
def size_overflow_as_error(batch: int, image_shape, knobs: str = SIZE_KNOBS):
    """A batch or size too large for PyTorch's tensors (even on meta) as one line, not a traceback."""
    try:
        yield
    except Exception as exc:
        if not is_size_overflow(exc):
            raise
        raise size_overflow_error(batch, image_shape, knobs) from None


def _meta_net(spec: Spec, dtype: torch.dtype) -> StagedNet:
    with torch.device("meta"):
        return StagedNet(spec).to(dtype)


def _trace_net(net: StagedNet, batch: int, dtype, backward: bool):
    spec = net.spec
    x = torch.empty(batch, spec.input_channels, *spec.input_size, device="meta", dtype=dtype)
    return trace(net, net.stages, x, backward=backward)


def profile(spec: Spec, *, batch: int = 256, size: tuple[int, int] | None = None, dtype: str = "float32",
            optimizer: str = "sgd", ops=DEFAULT_OPS, training: bool = True,
            decoder: DecoderConfig = DecoderConfig(), weight_decay: float = 1e-6,
            exclude_bn_bias: bool = True) -> Profile:
    check_settings(batch, dtype, optimizer, ops)
    if size is not None:
        spec = at_input_size(spec, size)
    torch_dtype = DTYPES[dtype]
    bpe = torch.empty(0, dtype=torch_dtype).element_size()
    net = _meta_net(spec, torch_dtype)
    image_shape = (spec.input_channels, *spec.input_size)
    with size_overflow_as_error(batch, image_shape):
        traced = _trace_net(net, batch, torch_dtype, backward=True)
    analytic = stage_counts(spec)
    rows = []
    for name, t in traced.items():
        shape = t.output_shape[1:]
        rows.append(StageProfile(
            name=name, output_shape=shape, params=t.params, forward=_per_image(t.forward, batch),
            backward=_per_image(t.backward, batch),
            activations={"output": batch * _prod(shape) * bpe,
                         "conv_outputs": t.conv_output_elems * bpe,
                         "block_outputs": batch * analytic[name].block_output_elems * bpe,
                         "saved": t.saved_bytes}))
    result = Profile(spec, batch, dtype, optimizer, tuple(ops), rows,
                     unknown={n: dict(t.unknown) for n, t in traced.items() if t.unknown})
    result.groups = local_stages(spec)
    if training:
        result.memory = {}
        for method in METHODS:  # the runner's step, run on meta tensors (archspec.profiling.step_memory)
            with size_overflow_as_error(batch, image_shape):  # (the step holds two views of every image)
                peak = step_peak(spec, method, batch, torch_dtype, optimizer, decoder, weight_decay,
                                 exclude_bn_bias, net=net)
            result.memory[method] = MemoryPlan(method, weights=peak.weights, gradients=peak.gradients,
                                               optimizer=peak.optimizer, decoders=peak.decoders,
                                               activations=peak.activations, peak_unit=peak.where)
    return result


def _per_image(counts: dict[str, int], batch: int) -> dict[str, int]:
    assert all(v % batch == 0 for v in counts.values()), counts  # every op's count is linear in the batch
    return {k: v // batch for k, v in counts.items()}


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


__all__ = ["ACTIVATION_MEASURES", "DTYPES", "METHODS", "Profile", "StageProfile", "profile"]
