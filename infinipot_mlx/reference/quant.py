"""Affine quantization in torch, bit for bit MLX's CPU `mx.quantize` / `mx.dequantize`.

The quantized KV cache (cache.QuantizedLayerKVCache) stores keys and values as mlx-lm's
QuantizedKVCache does: per group of `group_size` elements along the last axis, a scale s
and a bias b in the input dtype, and each element as q in [0, 2**bits - 1] with x ~ s q + b.
The rule is MLX's (mlx/backend/cpu/quantized.cpp, `quantize`), all in float32:

    lo, hi = min, max of the group;  scale = max((hi - lo) / (2**bits - 1), 1e-7)
    edge = lo, scale > 0  when |lo| > |hi|,  else  edge = hi, scale = -scale
    q0 = rint(edge / scale);  if q0 != 0: scale = edge / q0, bias = edge  else bias = 0
    q = clip(rint((x - bias) / scale), 0, 2**bits - 1)

so the larger-magnitude edge of the group is stored exactly (bias = edge, q = 0 there).
q is computed with the float32 scale and bias; they are stored rounded to the input dtype.
rint and torch.round both round half to even. Packing: element k of each run of 32 / bits
goes to bits [k * bits, (k + 1) * bits) of one uint32. Dequantization multiplies and adds in
the scales' dtype, one rounding per operation, as MLX's CPU fallback does.

MLX's Metal (Apple GPU) kernel differs at the edges (its max starts at 0, it rounds half away
from zero, it may fuse s q + b), so byte parity holds against MLX's CPU stream.

Notation: D = last-axis length, G = D / group_size groups, P = D * bits / 32 packed words.
"""

from __future__ import annotations

import torch

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
EPS = 1e-7  # MLX's floor on the scale (a float32 constant there too)


def check(group_size: int, bits: int, dim: int | None = None) -> None:
    """ValueError unless bits is 4 or 8 and group_size is 32, 64 or 128 (and divides dim)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if group_size not in GROUP_SIZES or (dim is not None and dim % group_size):
        axis = "" if dim is None else f" and divide the last axis ({dim})"
        raise ValueError(f"group_size must be one of {GROUP_SIZES}{axis}, got {group_size!r}")


def quantize(x: torch.Tensor, group_size: int = 64, bits: int = 4):
    """x (..., D) float32/float16/bfloat16 -> packed (..., P) uint32, scales (..., G), biases (..., G)
    (scales and biases in x's dtype), equal to mx.quantize(x, group_size, bits) bit for bit."""
    check(group_size, bits, x.shape[-1])
    groups = x.float().reshape(*x.shape[:-1], -1, group_size)  # (..., G, gs)
    n_bins = torch.tensor(float(2**bits - 1), device=x.device)
    hi, lo = groups.amax(-1, keepdim=True), groups.amin(-1, keepdim=True)  # (..., G, 1)
    low_edge = lo.abs() > hi.abs()
    scale = torch.maximum((hi - lo) / n_bins, torch.tensor(EPS, device=x.device))
    scale = torch.where(low_edge, scale, -scale)
    edge = torch.where(low_edge, lo, hi)
    q0 = torch.round(edge / scale)
    exact = q0 != 0  # the edge is representable: store it as the bias
    scale = torch.where(exact, edge / q0, scale)
    bias = torch.where(exact, edge, torch.zeros((), device=x.device))
    q = torch.clamp(torch.round((groups - bias) / scale), 0, 2**bits - 1)  # (..., G, gs)
    packed = pack(q.to(torch.int64).reshape(x.shape), bits)
    return packed, scale.squeeze(-1).to(x.dtype), bias.squeeze(-1).to(x.dtype)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
               group_size: int = 64, bits: int = 4) -> torch.Tensor:
    """packed (..., P) uint32, scales, biases (..., G) -> x (..., D) in the scales' dtype,
    equal to mx.dequantize(packed, scales, biases, group_size, bits) bit for bit."""
    check(group_size, bits)
    q = unpack(packed, bits)  # (..., D) int64
    if q.shape[-1] != scales.shape[-1] * group_size:
        raise ValueError(f"{packed.shape[-1]} packed words hold {q.shape[-1]} elements, but "
                         f"{scales.shape[-1]} groups of {group_size} need {scales.shape[-1] * group_size}")
    groups = q.reshape(*scales.shape, group_size).to(scales.dtype)  # (..., G, gs), exact
    return (groups * scales[..., None] + biases[..., None]).reshape(q.shape)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """q (..., D) ints in [0, 2**bits) -> (..., D * bits / 32) uint32, element k of each word at bit k * bits."""
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=q.device) * bits  # (per_word,)
    words = (q.reshape(*q.shape[:-1], -1, per_word) << shifts).sum(-1)  # (..., P) int64 in [0, 2**32)
    return (words - (words >= 2**31).long() * 2**32).to(torch.int32).view(torch.uint32)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of pack: (..., P) uint32 -> (..., P * 32 / bits) int64."""
    per_word = 32 // bits
    words = packed.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # (..., P)
    shifts = torch.arange(per_word, device=packed.device) * bits  # (per_word,)
    return ((words[..., None] >> shifts) & (2**bits - 1)).reshape(*packed.shape[:-1], -1)
