"""reference/quant.py against MLX's CPU mx.quantize / mx.dequantize: every bit equal.

Packed words, scales, biases and the dequantized values are compared as raw bits (so
-0.0 != 0.0 and bfloat16 is compared as uint16), for float32, float16 and bfloat16, bits 4
and 8, group sizes 32, 64 and 128, on random rows and on rows built to hit each branch of
MLX's rule: constant groups, zeros, |min| > |max|, rounding ties, tiny groups whose scale is
the 1e-7 floor, subnormals, and values near float16's largest.
"""

import infinipot_mlx  # noqa: F401  (before mlx)
import mlx.core as mx
import numpy as np
import pytest
import torch

from infinipot_mlx.reference import quant
from infinipot_mlx.reference.cache import QuantizedLayerKVCache

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
D = 256  # row length: two groups of 128, eight of 32


def _mx(x: torch.Tensor) -> mx.array:
    """The same bits as an mx.array."""
    if x.dtype == torch.bfloat16:
        return mx.array(x.view(torch.int16).numpy()).view(mx.bfloat16)
    return mx.array(x.numpy())


def _bits(a) -> np.ndarray:
    """Raw bits of a torch tensor or an mx.array (floats as same-width unsigned ints)."""
    a = a.view(torch.int16).numpy() if torch.is_tensor(a) and a.dtype == torch.bfloat16 else \
        a.numpy() if torch.is_tensor(a) else np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)
    return a.view({2: np.uint16, 4: np.uint32}[a.itemsize])


def _assert_same_as_mlx(x: torch.Tensor, group_size: int, bits: int) -> None:
    ours = quant.quantize(x, group_size, bits)
    theirs = mx.quantize(_mx(x), group_size=group_size, bits=bits, stream=mx.cpu)
    for name, a, b in zip(("packed", "scales", "biases"), ours, theirs):
        assert a.shape == tuple(b.shape), name
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=name)
    assert ours[0].dtype == torch.uint32 and ours[1].dtype == ours[2].dtype == x.dtype
    back = quant.dequantize(*ours, group_size, bits)
    mlx_back = mx.dequantize(*theirs, group_size=group_size, bits=bits, stream=mx.cpu)
    assert back.dtype == x.dtype and back.shape == x.shape
    np.testing.assert_array_equal(_bits(back), _bits(mlx_back), err_msg="dequantized")


def _adversarial(bits: int) -> torch.Tensor:
    """(rows, D) float32 rows, each one case repeated along the row (every group sees it)."""
    n_bins = 2**bits - 1
    ramp = torch.arange(D, dtype=torch.float32) % 128  # 0..127 in each group of 128
    halves = (ramp % (2 * n_bins + 1)) / 2  # k / 2 in [0, n_bins]: rounding ties at every odd k
    rows = [
        torch.zeros(D), -torch.zeros(D), torch.full((D,), 3.25), torch.full((D,), -3.25),
        torch.full((D,), 1e-8), torch.full((D,), -1e-8),  # constant groups, scale at the floor
        halves, -halves, halves - n_bins, halves + 0.25,  # ties, both signs, |min| > |max|
        halves * 1e-8, (halves - 3) * 1e-9,  # tiny ranges: scale 1e-7, q0 = 0, bias 0
        ramp - 100.0, 100.0 - ramp, (ramp - 64) / 7,  # |min| > |max|, |max| > |min|, balanced
        torch.where(ramp % 2 == 0, 1.0, -1.0), torch.where(ramp == 5, -2.0, 1.0),
        torch.where(ramp == 0, 60000.0, -60000.0 + ramp), torch.full((D,), 65504.0),
        torch.full((D,), 6e-8) * (ramp % 3),  # float16 subnormals
        torch.where(ramp < 64, 0.0, 1.0) * 2.0**-20,
    ]
    return torch.stack(rows)  # (rows, D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", quant.BITS)
@pytest.mark.parametrize("group_size", quant.GROUP_SIZES)
def test_random_rows_match_mlx(dtype, bits, group_size):
    g = torch.Generator().manual_seed(bits * 1000 + group_size)
    for spread in (1e-4, 1.0, 40.0):
        x = torch.randn(3, 16, D, generator=g) * spread + torch.randn(3, 16, 1, generator=g) * spread
        _assert_same_as_mlx(x.to(dtype), group_size, bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", quant.BITS)
@pytest.mark.parametrize("group_size", quant.GROUP_SIZES)
def test_adversarial_rows_match_mlx(dtype, bits, group_size):
    _assert_same_as_mlx(_adversarial(bits).to(dtype), group_size, bits)


def test_ties_round_half_to_even():
    """A group 0..15 in halves at 4 bits: scale -1, bias 15, q = rint(15 - x); 7.5 -> 8, 6.5 -> 6."""
    x = torch.arange(32, dtype=torch.float32) / 2  # 0, 0.5, ..., 15.5 -> clipped
    x[-1] = 15.0
    packed, scales, biases = quant.quantize(x[None], 32, 4)
    assert scales.item() == -1.0 and biases.item() == 15.0
    q = quant.unpack(packed, 4)[0]
    assert q[15].item() == 8 and q[17].item() == 6  # x = 7.5 -> 7.5 -> 8; x = 8.5 -> 6.5 -> 6


def test_packing_order_is_mlx():
    """Element k of a word sits at bits [k * bits, (k + 1) * bits): pack and unpack invert."""
    q = torch.arange(64).reshape(2, 32) % 16  # (2, 32) 4-bit values
    packed = quant.pack(q, 4)
    assert packed.dtype == torch.uint32 and packed.shape == (2, 4)
    assert int(packed.view(torch.int32)[0, 0]) & 0xF == 0 and (int(packed.view(torch.int32)[0, 0]) >> 4) & 0xF == 1
    assert torch.equal(quant.unpack(packed, 4), q)
    q8 = torch.tensor([[1, 2, 3, 255] * 8])
    assert int(quant.pack(q8, 8).view(torch.int32)[0, 0].item()) & 0xFFFFFFFF == 0xFF030201


def test_bad_parameters_are_refused():
    x = torch.zeros(2, 96)
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(x, 64, 4)  # 64 does not divide 96
    with pytest.raises(ValueError, match="bits"):
        quant.quantize(x, 32, 3)
    with pytest.raises(ValueError, match="group_size must be one of"):
        QuantizedLayerKVCache(group_size=16, bits=4)
