"""Output shapes of the ops a CNN's training step runs, answered without PyTorch's Python meta
functions (their checks import sympy and torch._dynamo on first use: ~1.5 s in all). Only shapes
matter on the meta device; autograd, above the dispatch mode that uses these, records the same
graph and saves the same tensors (tests compare with a real run, byte for byte)."""
from __future__ import annotations

import torch

aten = torch.ops.aten


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    # batch norm keeps its saved mean and inverse std in float32 for half types (as on CUDA)
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _bn_shapes(args):
    x, training = args[0], args[5]
    stats = x.new_empty((x.shape[1],) if training else (0,), dtype=_stat_dtype(x))
    return x.new_empty(x.shape), stats, stats.new_empty(stats.shape)


def _bn_backward_shapes(args):
    x, weight, mask = args[1], args[2], args[-1]
    grads = (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape))
    return tuple(g if m else None for g, m in zip(grads, mask))


def _elementwise(args):
    """Equal shapes and dtypes in, the same shape out; anything else goes to PyTorch."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    first = tensors[0]
    if all(t.shape == first.shape and t.dtype == first.dtype for t in tensors):
        return first.new_empty(first.shape)
    return NotImplemented


def _mean_shape(args):
    """aten.mean / aten.sum over dims (no dtype argument); anything else goes to PyTorch."""
    if len(args) < 2 or not isinstance(args[1], (list, tuple)) or not args[1]:
        return NotImplemented
    x, dims = args[0], [d % args[0].dim() for d in args[1]]
    keep = len(args) > 2 and args[2]
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return x.new_empty(shape) if len(args) <= 3 else NotImplemented  # no dtype argument


def _in_place(args):
    return args[0]


def _pair(v) -> tuple[int, int]:
    return (v[0], v[-1]) if isinstance(v, (list, tuple)) else (v, v)


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_shape(args):
    """aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)."""
    x, weight, stride, padding, dilation, transposed = args[0], args[1], args[3], args[4], args[5], args[6]
    groups = args[8] if len(args) > 8 else 1
    if transposed or x.dim() != 4 or x.shape[1] != weight.shape[1] * groups:
        return NotImplemented  # PyTorch's own meta function checks it (and says what is wrong)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[2:]
    return x.new_empty((x.shape[0], weight.shape[0], _window_out(x.shape[2], kh, sh, ph, dh),
                        _window_out(x.shape[3], kw, sw, pw, dw)))


def _conv_backward_shapes(args):
    """aten.convolution_backward(grad_out, input, weight, bias_sizes, ..., transposed, ..., mask)."""
    x, weight, bias_sizes, transposed, mask = args[1], args[2], args[3], args[7], args[-1]
    if transposed:
        return NotImplemented
    bias = weight.new_empty(tuple(bias_sizes)) if bias_sizes is not None else weight.new_empty((weight.shape[0],))
    grads = (x.new_empty(x.shape), weight.new_empty(weight.shape), bias)
    return tuple(g if m else None for g, m in zip(grads, mask))


def _max_pool_shapes(args):
    """aten.max_pool2d_with_indices(input, kernel, stride, padding, dilation, ceil_mode)."""
    x = args[0]
    kernel = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] else kernel
    padding = _pair(args[3]) if len(args) > 3 else (0, 0)
    dilation = _pair(args[4]) if len(args) > 4 else (1, 1)
    if (len(args) > 5 and args[5]) or x.dim() != 4:
        return NotImplemented  # ceil_mode
    shape = (*x.shape[:2], *(_window_out(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i])
                             for i in range(2)))
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


# On the meta device PyTorch runs convolutions, pooling, batch norm, bilinear resizing and even
# additions through Python meta functions (whose checks import sympy and torch._dynamo on first
# use: ~1.5 s in all). Only shapes
# matter there, so the counter answers these ops itself; autograd, above this mode, records
# the same graph and saves the same tensors (tests compare with a real run, byte for byte).
META_SHORTCUTS = {
    aten.add: _elementwise,
    aten.addmm: lambda args: args[1].new_empty((args[1].shape[0], args[2].shape[1]))
    if args[1].shape[1] == args[2].shape[0] else NotImplemented,
    aten.mm: lambda args: args[0].new_empty((args[0].shape[0], args[1].shape[1]))
    if args[0].shape[1] == args[1].shape[0] else NotImplemented,
    aten.div: _elementwise,
    aten.mean: _mean_shape,
    aten.sum: _mean_shape,
    aten.threshold_backward: _elementwise,
    aten.relu: _elementwise,
    aten.relu_: _in_place,
    aten.add_: _in_place,
    aten.upsample_bilinear2d: lambda args: args[0].new_empty((*args[0].shape[:2], *args[1])),
    aten.upsample_bilinear2d_backward: lambda args: args[0].new_empty(tuple(args[2])),
    aten.native_batch_norm: _bn_shapes,
    aten.native_batch_norm_backward: _bn_backward_shapes,
    aten.convolution: _conv_shape,
    aten.convolution_backward: _conv_backward_shapes,
    aten.max_pool2d_with_indices: _max_pool_shapes,
    aten.max_pool2d_with_indices_backward: lambda args: args[1].new_empty(args[1].shape),
}
