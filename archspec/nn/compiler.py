"""Spec -> StagedNet: an nn.Module whose stages carry the spec's names, in order."""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from archspec.errors import SpecError
from archspec.nn.blocks import PoolHead, block_module, downsample_module
from archspec.spec.schema import Spec, Stage
from archspec.spec.walk import walk


def build_stage(stage: Stage, units) -> nn.Sequential:
    """One stage from its units of the layer walk (archspec.spec.walk): the downsampling first
    (``pool`` or ``resize``), then ``block1``, ``block2``, ...; every block is told the shape that
    enters it (a residual block's shortcut is a projection where the shape changes)."""
    layers: dict[str, nn.Module] = {}
    for unit in units:
        if unit.part == "entry":
            ds = stage.downsample
            layers["resize" if ds.kind == "bilinear" else "pool"] = downsample_module(ds, stage.output_size)
        else:
            cin, h, w = unit.shape_in
            layers[f"block{unit.number}"] = block_module(stage.blocks[unit.group], cin, first=unit.repeat == 0,
                                                         size=(h, w))
    return nn.Sequential(OrderedDict(layers))


class StagedNet(nn.Module):
    """Stages as named children (``net.conv1``, ``net.res2``, ..., ``net.head``) run in order.

    ``net(x)`` returns the head's output; ``net(x, outputs=["res3", "res5"])`` returns a dict
    of those stages' outputs (``"head"`` allowed), computing no further than it must.
    """

    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        units: dict[str, list] = {name: [] for name in spec.stage_names}
        for unit in walk(spec):  # the spec validated first: no stage name clashes with the module's
            units.setdefault(unit.name, []).append(unit)
        self.stage_names: list[str] = list(spec.stage_names)
        for stage in spec.stages:
            self.add_module(stage.name, build_stage(stage, units[stage.name]))
        self.head = PoolHead(spec.head, spec.features)
        # (channels, height, width) each stage must produce, checked by check_shapes().
        self.expected_shapes = OrderedDict((name, units[name][-1].shape_out) for name in self.stage_names)

    @property
    def stages(self) -> "OrderedDict[str, nn.Module]":
        """The stages and the head, in execution order."""
        return OrderedDict([(n, getattr(self, n)) for n in self.stage_names] + [("head", self.head)])

    def forward(self, x: torch.Tensor, outputs: Sequence[str] | None = None):
        if outputs is None:
            for name in self.stage_names:
                x = getattr(self, name)(x)
            return self.head(x)
        wanted = list(outputs)
        order = self.stage_names + ["head"]
        unknown = [n for n in wanted if n not in order]
        if unknown:
            raise KeyError(f"unknown stage(s) {unknown}; stages are {order}")
        last = max(order.index(n) for n in wanted)
        found = {}
        for name in order[: last + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                found[name] = x
        return {n: found[n] for n in wanted}

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled output of the last stage (e.g. PResNet-50's 4096-d vector)."""
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.head.representation(x)


def check_shapes(net: StagedNet, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Run ``net`` on a fake input (no real memory, any device) and compare every stage's
    output shape with the spec's declared one; returns the observed shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = net.spec
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()  # eval: batch norm leaves its running statistics alone
    try:
        with torch.no_grad():
            if device.type == "meta":
                outs = net(torch.empty(batch, spec.input_channels, *spec.input_size, device="meta"),
                           outputs=net.stage_names + ["head"])
            else:
                with FakeTensorMode(allow_non_fake_inputs=True):
                    x = torch.empty(batch, spec.input_channels, *spec.input_size, device=device)
                    outs = net(x, outputs=net.stage_names + ["head"])
    finally:
        net.train(was_training)
    observed = {name: tuple(t.shape[1:]) for name, t in outs.items()}
    for name, expected in net.expected_shapes.items():
        if observed[name] != expected:
            raise SpecError(f"compiled stage produces {observed[name]} but the spec declares {expected}",
                            what=f"stage '{name}'", hint="this is a bug in archspec's compiler; please report it")
    head_out = spec.head.fc or spec.features
    if observed["head"] != (head_out,):
        raise SpecError(f"head produces {observed['head']}, expected ({head_out},)", what="head")
    return observed


def compile_spec(spec: Spec, *, device: torch.device | str | None = None, check: bool = True) -> StagedNet:
    """Build the module for ``spec`` on ``device`` (``"meta"`` builds without memory).

    With ``check``, a memory-free twin on the meta device is built and run first and every
    stage's output shape is compared with the spec's declared one.
    """
    if check:
        with torch.device("meta"):
            check_shapes(StagedNet(spec))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return StagedNet(spec)
