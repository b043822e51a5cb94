"""Peak training memory of every rank of one process per local stage, by running its step on meta.

Rank k of ``archspec train --processes stage`` holds its local stage's weights, buffers and
optimizer state and its decoder; per step it receives its input, runs the schedule's code for its
stage (:class:`archspec.train.schedule.Schedules`: ``sync_step``, or ``_pipelined_batch`` with its
bounded send queues and, for LoCo, the previous batch's graph and weight snapshot), sends its
output and gradient, and steps its optimizer. This module runs exactly that code on the meta
device under :class:`~archspec.profiling.tensor_memory.TensorMemory`, with the messages replaced by
meta tensors of the same shapes (a received tensor is a new buffer; a sent one stays referenced
until its send would complete), and adds the optimizer step as :mod:`archspec.profiling.step_memory`
does. The pipelined schedule is run for three batches and its steady state (the third) is taken.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from archspec.nn.decoders import DecoderConfig
from archspec.profiling.memory import OPTIMIZER_STATES, local_stages
from archspec.profiling.norm_checks import lenient_norms
from archspec.profiling.step_memory import StepPeak, _direct_autograd, update_temporaries
from archspec.profiling.tensor_memory import TensorMemory, held_bytes
from archspec.spec.schema import Spec


class _Sent:
    """A completed send: keeps its tensor until ``wait`` (as an isend does)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def wait(self):
        self.tensor = None


class _Queue:
    """archspec.train.transport.Outbox without a peer: at most ``depth`` tensors referenced."""

    def __init__(self, depth: int):
        self.depth, self.sent = depth, deque()

    def send(self, tensor):
        while len(self.sent) >= self.depth:
            self.sent.popleft()
        self.sent.append(tensor.contiguous())

    def flush(self):
        self.sent.clear()


@contextlib.contextmanager
def _no_network():
    import torch.distributed as dist

    saved = dist.isend
    dist.isend = lambda tensor, dst=None, group=None, tag=0: _Sent(tensor)
    try:
        yield
    finally:
        dist.isend = saved


def rank_peaks(spec: Spec, method: str, batch: int, dtype: torch.dtype = torch.float32, optimizer: str = "sgd",
               decoder: DecoderConfig = DecoderConfig(), weight_decay: float = 1e-6, exclude_bn_bias: bool = True,
               schedule: str = "sync") -> dict[str, StepPeak]:
    """The peak of one steady-state step of every rank, by local-stage label."""
    from archspec.nn.compiler import StagedNet
    from archspec.spec.validate import infer_shapes
    from archspec.train.methods import build_decoders, build_method
    from archspec.train.optim import param_groups
    from archspec.train.schedule import LAG, Schedules
    from archspec.train.stale import stage_delays

    groups = local_stages(spec)
    labels = [ls.label for ls in spec.local_stages]
    shapes = {s.name: s for s in infer_shapes(spec)}
    io_shapes = [(tuple(shapes[g[0]].in_shape), tuple(shapes[g[-1]].out_shape)) for g in groups]
    delays = stage_delays(method, len(groups), schedule)
    bpe = torch.empty(0, dtype=dtype).element_size()
    states = OPTIMIZER_STATES[optimizer]
    peaks = {}
    for k, label in enumerate(labels):
        with torch.device("meta"):
            net = StagedNet(spec).to(dtype)
            decoders = build_decoders(net, method, decoder).to(dtype)
        own = [getattr(net, name) for name in groups[k]] + ([decoders[label]] if label in decoders else [])
        params = [p for m in own for p in m.parameters()]
        stage_own = [getattr(net, name) for name in groups[k]] + ([net.head] if k == 0 else [])  # rank 0 keeps the head
        dec_own = [decoders[label]] if label in decoders else []
        stage_all = [p for m in own[:len(groups[k])] for p in m.parameters()]
        dec_all = [p for m in dec_own for p in m.parameters()]
        resident = params + [b for m in own for b in m.buffers()]
        rank = SimpleNamespace(
            stage=k, stages=len(groups), rank=k, label=label, groups=groups, io_shapes=io_shapes,
            shard_rows=2 * batch, cfg=SimpleNamespace(method=method, batch=batch), model=SimpleNamespace(net=net,
                                                                                                     decoders=decoders),
            method=build_method(method, net, decoders), has_decoder=label in decoders, delay=delays[k], pending=None,
            stage_params=[p for name in groups[k] for p in getattr(net, name).parameters() if p.requires_grad],
            decoder_params=[p for _, p in decoders[label].named_parameters()] if label in decoders else [],
            activations_out=_Queue(LAG), gradients_out=_Queue(LAG), peer=lambda s: s)
        tracker = TensorMemory(resident, record=True)
        update = {"bytes": 0, "gradients": 0, "decoder_gradients": 0}
        grad_numbers = {"stage": set(), "decoder": set()}  # storages that were .grad of a parameter

        def recv(shape, src, dtype_=None, wire=dtype):
            return torch.empty(shape, device="meta", dtype=dtype_ or wire)

        def optimizer_step(tracker=tracker, update=update, params=params, numbers=grad_numbers,
                           stage_all=stage_all, dec_all=dec_all):
            # every gradient this rank made, alive at once, plus the update's temporaries
            grads = {"stage": [p.grad for p in stage_all if p.grad is not None],
                     "decoder": [p.grad for p in dec_all if p.grad is not None]}
            for which, tensors in grads.items():
                numbers[which].update(tracker.number(g) for g in tensors)
            if tracker.current + temporaries > update["bytes"]:
                update.update(bytes=tracker.current + temporaries, gradients=held_bytes(grads["stage"]),
                              decoder_gradients=held_bytes(grads["decoder"]))
            for p in params:
                p.grad = None

        rank._recv = recv
        rank._check_shape = lambda y: None
        rank._update = optimizer_step
        rank._snapshot = lambda rank=rank: Schedules._snapshot(rank)
        rank._finish_pending = lambda rank=rank: Schedules._finish_pending(rank)
        rank.reduce_gradients = lambda: None
        temporaries = update_temporaries(optimizer, param_groups(own, weight_decay, exclude_bn_bias), bpe)
        x_shape = (2 * batch, *io_shapes[0][0])
        with lenient_norms(), _no_network(), _direct_autograd(), tracker:
            # rank 0 reads the batch and makes both views (one tensor); the batch stays referenced
            images = torch.empty((batch, *io_shapes[0][0]), device="meta", dtype=dtype) if k == 0 else None
            if schedule == "sync":
                x = torch.empty(x_shape, device="meta", dtype=dtype) if k == 0 else None
                Schedules.sync_step(rank, x)
                optimizer_step()
            else:
                for n in range(3):  # the third batch is the steady state (LoCo keeps one batch's graph)
                    if n == 2:
                        tracker.reset_peak()
                        tracker.peak_event = len(tracker.events) - 1  # what is alive now, if nothing exceeds it
                        update.update(bytes=0, gradients=0, decoder_gradients=0)
                    x = torch.empty(x_shape if k == 0 else (2 * batch, *io_shapes[k][0]), device="meta", dtype=dtype)
                    Schedules._pipelined_batch(rank, x)
                    del x
        del images
        if tracker.peak >= update["bytes"]:  # the peak is in the passes: the gradients alive then
            live = tracker.live_at_peak()
            grads, dec_grads = (sum(size for n, size in live.items() if n in grad_numbers[which])
                                for which in ("stage", "decoder"))
            alive, where = tracker.peak, label
        else:
            grads, dec_grads, alive, where = (update["gradients"], update["decoder_gradients"], update["bytes"],
                                              "optimizer step")
        stage_resident = [t for m in stage_own for t in (*m.parameters(), *m.buffers())]
        dec_resident = [t for m in dec_own for t in (*m.parameters(), *m.buffers())]
        numel = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        peaks[label] = StepPeak(weights=held_bytes(stage_resident), gradients=grads,
                                optimizer=states * numel(stage_all) * bpe,
                                decoders=held_bytes(dec_resident) + states * numel(dec_all) * bpe + dec_grads,
                                activations=alive - grads - dec_grads, where=where)
    return peaks


# -- a training config's ranks (archspec validate CONFIG --processes ...) ---------------------------
@dataclass(frozen=True)
class RankPeak:
    """The estimated peak of the ranks that run one local stage (one rank per data-parallel replica)."""

    ranks: tuple[int, ...]
    stages: str  # the local stage's label ("conv1+res2"), or "whole network" (--processes one)
    peak: StepPeak


def config_rank_peaks(cfg, processes: str = "stage", data_parallel: int = 1, spec=None) -> list[RankPeak]:
    """Every rank of ``archspec train CONFIG --processes P --data-parallel N``, its schedule the
    config's ``pipeline``: one process per local stage (rank = replica x stages + stage, each
    with its shard of batch / N images) by :func:`rank_peaks`; ``processes="one"``: N replicas
    of the whole network by :func:`archspec.profiling.step_memory.step_peak` at batch / N. Not
    counted with N > 1: the replicas' messages (batch-norm sums, gathered embeddings) and the
    rest of the whole batch's similarity matrix, which every replica's loss takes."""
    from archspec.profiling.profiler import DTYPES
    from archspec.profiling.step_memory import step_peak
    from archspec.train.config import load_training_spec

    spec = spec if spec is not None else load_training_spec(cfg)
    o = cfg.optimizer
    args = (spec, cfg.method, cfg.batch // data_parallel, DTYPES[cfg.dtype], o.name, cfg.decoders.decoder_config(),
            o.weight_decay, o.exclude_bn_bias)
    if processes == "one":
        return [RankPeak(tuple(range(data_parallel)), "whole network", step_peak(*args))]
    peaks = rank_peaks(*args, schedule=cfg.pipeline)
    return [RankPeak(tuple(r * len(peaks) + k for r in range(data_parallel)), label, peak)
            for k, (label, peak) in enumerate(peaks.items())]


def memory_hint(cfg, processes: str = "one", data_parallel: int = 1) -> str:
    """What lowers the peak memory of ``cfg``'s run, for its method, precision and processes."""
    ways = ["lower 'batch'"]
    if cfg.method == "simclr":
        ways.append("use method gim or loco (a local loss per stage frees its activations)")
    if processes == "one":
        ways.append("one process per local stage on its own device (see 'archspec validate CONFIG "
                    "--processes stage')")
    elif cfg.method == "loco" and cfg.pipeline == "pipelined":
        ways.append("--schedule sync (pipelined LoCo keeps the previous batch's graph)")
    if processes == "stage" or data_parallel > 1:
        ways.append(f"more data-parallel replicas (--data-parallel {2 * data_parallel}: half the images per rank)")
    if processes == "stage":
        ways.append("a spec with more, smaller local stages")
    if cfg.dtype in ("float32", "float64"):
        ways.append("dtype: bfloat16 (mixed precision)")
    return ", ".join(ways) + ", or raise --memory-budget"
