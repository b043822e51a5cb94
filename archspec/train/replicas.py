"""Data parallelism that equals one process: N replicas, one contiguous shard of a batch each.

Replica ``index`` of ``replicas`` takes the rows :func:`shard` gives it, and a step is built so
that its loss and (summed) gradients equal those of ONE process on the whole batch, up to
float rounding. Two things in a SimCLR step look at more than one image, and both must see
the whole batch:

- **batch norm** normalises with statistics over the batch: :class:`ReplicaBatchNorm2d`
  all-reduces them over the process group (gloo works; ``torch.nn.SyncBatchNorm`` is CUDA
  only), and its backward all-reduces the two sums the input gradient needs.
  :func:`convert_batchnorm` swaps it in for every ``nn.BatchNorm2d`` of a network, keeping the
  same parameters, buffers and state_dict.
- **the contrastive loss** takes its negatives from the whole batch: :func:`gathered_nt_xent`
  gathers every replica's embeddings (as constants) and puts its own rows, with their graph,
  in their slot, so every replica computes the full-batch loss and the exact gradient of it
  with respect to its own rows.

Every replica then holds its rows' share of each parameter's gradient: :func:`all_reduce_grads`
sums them (not averages: each replica's loss is already the whole batch's mean). With the
same initial weights, optimizer and views (``SimCLRAugment(..., rows=(start, total))`` draws
the whole batch's views), replicas stay identical step after step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from archspec.errors import UserError
from archspec.train.losses import nt_xent

_CHANNELS = (0, 2, 3)  # the dimensions batch norm reduces over: all but the channels


def shard(batch: int, replicas: int, index: int) -> slice:
    """The contiguous rows of replica ``index`` (of ``replicas``) in a batch of ``batch``."""
    if replicas < 1 or not 0 <= index < replicas:
        raise UserError(f"replica index {index} is not one of {replicas} replicas (hint: 0 <= index < replicas, "
                        f"replicas >= 1)")
    if batch < replicas or batch % replicas:
        raise UserError(f"a batch of {batch} does not split evenly over {replicas} replicas (hint: make the "
                        f"batch size a multiple of {replicas})")
    size = batch // replicas
    return slice(index * size, (index + 1) * size)


def _world(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _ReplicaNorm(torch.autograd.Function):
    """Training-mode batch norm over the union of every replica's batch.

    Forward: all-reduce per-channel (sum, count), then the centred sum of squares (two passes:
    no cancellation of sum(x^2) - n mean^2). Backward, with xhat = (x - mean) * invstd:

        dx = w invstd (dy - sum(dy) / n - xhat sum(dy xhat) / n)     (sums over all replicas)

    while dw = sum(dy xhat) and db = sum(dy) are this replica's rows only.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group):
        shape = (1, -1, 1, 1)
        sums = torch.cat([x.sum(_CHANNELS), x.new_full((1,), x.numel() / x.shape[1])])
        dist.all_reduce(sums, group=group)
        total, count = sums[:-1], sums[-1]
        if count <= 1:  # the same on every replica: the count is the group's
            raise ValueError(f"batch norm over the replicas wants more than 1 value per channel, got {int(count)}")
        mean = total / count
        centred = x - mean.view(shape)
        square = centred.square().sum(_CHANNELS)
        dist.all_reduce(square, group=group)
        var = square / count  # biased, as batch norm normalises
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        y = xhat if weight is None else xhat * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(xhat, invstd, weight, count)
        ctx.group = group
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dcount):
        xhat, invstd, weight, count = ctx.saved_tensors
        shape = (1, -1, 1, 1)
        sum_dy = dy.sum(_CHANNELS)
        sum_dy_xhat = (dy * xhat).sum(_CHANNELS)
        dx = None
        if ctx.needs_input_grad[0]:  # the same on every replica (same network), so all of them reduce
            sums = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(sums, group=ctx.group)
            mean_dy, mean_dy_xhat = (sums / count).chunk(2)
            scale = invstd if weight is None else invstd * weight
            dx = scale.view(shape) * (dy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape))
        dw = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy if weight is not None and ctx.needs_input_grad[2] else None  # affine: both or neither
        return dx, dw, db, None, None


class ReplicaBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the whole batch over
    every replica of ``group`` (None: the default process group). In eval mode, or with one
    replica (or no process group), it is plain ``nn.BatchNorm2d``. Its running statistics
    update as ``nn.BatchNorm2d``'s would on the concatenated batch; its weight and bias get
    this replica's share of the gradient (sum them over replicas: :func:`all_reduce_grads`).
    Same parameters, buffers and state_dict keys as ``nn.BatchNorm2d``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.group = group

    def extra_repr(self) -> str:
        return super().extra_repr() + ", replicated"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        # As nn.BatchNorm2d: batch statistics in training, and in eval without running stats.
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_stats or _world(self.group) == 1:
            return super().forward(x)
        y, mean, var, count = _ReplicaNorm.apply(x, self.weight, self.bias, self.eps, self.group)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * (count / (count - 1))  # the running variance is unbiased, as nn.BatchNorm2d's
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        return y


def convert_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by a :class:`ReplicaBatchNorm2d`
    over ``group`` that shares its Parameter and buffer objects: optimizers built before or after
    see the same tensors, and the state_dict is unchanged. Returns ``module`` (the new norm
    if ``module`` is itself a batch norm)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, ReplicaBatchNorm2d):
        new = ReplicaBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, device="meta", group=group)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        return new.train(module.training)
    for name, child in module.named_children():
        new = convert_batchnorm(child, group)
        if new is not child:
            setattr(module, name, new)
    return module


def all_reduce_grads(params, group=None) -> None:
    """Sum every parameter's ``.grad`` over ``group``, one flattened buffer per dtype and
    device. A parameter that requires grad but has none gets zeros first, so every replica
    sends the same layout; parameters that do not require grad are left alone."""
    seen, buckets = set(), {}
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for bucket in buckets.values():
        grads = [p.grad for p in bucket]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(summed)


def gathered_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, group, index: int,
                     replicas: int) -> torch.Tensor:
    """:func:`nt_xent` of the whole batch, on replica ``index`` of ``replicas`` holding rows
    ``shard(B, replicas, index)`` of both views. Other replicas' rows are gathered as constants
    and this replica's ``z1``, ``z2`` (with their graph) take their slot, so the value equals
    ``nt_xent`` on the full batch and the gradient with respect to this replica's rows is exact."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"gathered_nt_xent wants two [B, D] tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    world = _world(group)
    if world != replicas or not 0 <= index < replicas:
        raise ValueError(f"replica {index} of {replicas} does not match a process group of {world}")
    if replicas == 1:
        return nt_xent(z1, z2, temperature)
    mine = torch.stack([z1, z2]).detach().contiguous()  # one gather for both views
    parts = [torch.empty_like(mine) for _ in range(replicas)]
    dist.all_gather(parts, mine, group=group)
    v1, v2 = [p[0] for p in parts], [p[1] for p in parts]
    v1[index], v2[index] = z1, z2
    return nt_xent(torch.cat(v1), torch.cat(v2), temperature)
