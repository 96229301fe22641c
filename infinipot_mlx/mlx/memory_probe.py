"""The MLX side of the memory budget: live probes, measured weights, limits, calibration.

budget.py is the arithmetic (no array library); this module measures what it needs on the
machine (mx.get_active_memory / get_peak_memory, the loaded weights, one calibration block)
and applies the limits on Metal. `chat --memory` calls plan_session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..contract.budget import MemoryPlan, parse_budget, plan_from_config

@dataclass(frozen=True)
class MemoryReading:
    """Live figures: MLX active and peak bytes, unified/system memory, whether Metal runs."""

    active: int
    peak: int
    total: int
    metal: bool


def memory_probe() -> MemoryReading:
    """mx.get_active_memory / get_peak_memory, and the machine's memory (Metal, psutil, sysconf)."""
    import mlx.core as mx

    metal = _metal_available(mx)
    if metal:
        total = int(_device_info(mx)["memory_size"])
    else:
        try:
            import psutil

            total = int(psutil.virtual_memory().total)
        except ImportError:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryReading(mx.get_active_memory(), mx.get_peak_memory(), total, metal)


def _metal_available(mx) -> bool:
    metal = getattr(mx, "metal", None)
    try:
        return bool(metal is not None and metal.is_available())
    except Exception:  # builds without Metal may raise instead of answering False
        return False


def _device_info(mx) -> dict:
    """mx.device_info (mlx >= 0.30), or mx.metal.device_info on older releases."""
    info = getattr(mx, "device_info", None) or mx.metal.device_info
    return dict(info())


def weight_bytes(model) -> int:
    """Measured bytes of the model's parameters (quantized weights, scales and biases included)."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def compute_dtype_bytes(model) -> int:
    """Bytes per element of the model's compute dtype (budget.compute_dtype_bytes, the rule
    examples/memory_budget.py applies to the files): its floating dtype holding the most bytes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ..contract import budget

    held: dict = {}
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            held[str(v.dtype)] = (v.dtype.size, held.get(str(v.dtype), (0, 0))[1] + v.nbytes)
    return budget.compute_dtype_bytes(held)


def apply_memory_limits(plan: MemoryPlan) -> bool:
    """On Metal, cap MLX at the budget and wire the weights and the KV cache; False on CPU."""
    import mlx.core as mx

    if not _metal_available(mx):
        return False
    mx.set_memory_limit(plan.budget_bytes)
    wired = plan.resident_bytes + plan.kv_bytes
    max_wired = _device_info(mx).get("max_recommended_working_set_size", wired)
    mx.set_wired_limit(int(min(wired, max_wired)))
    return True


def measure_block(session, frame_hw: tuple[int, int]) -> int:
    """Peak bytes one block of blank frames adds through `session`, less the KV it keeps."""
    import mlx.core as mx
    import numpy as np

    n = session.config.block_slots * session.spec.frames_per_slot
    frames = np.zeros((n, *frame_hw, 3), np.uint8)  # (n, H, W, 3)
    active, kv = mx.get_active_memory(), session.cache.nbytes
    mx.reset_peak_memory()
    session.add_frames(frames)
    measured = mx.get_peak_memory() - active - (session.cache.nbytes - kv)
    mx.clear_cache()
    return max(0, int(measured))


def plan_session(budget: str | None, model, tokenizer, spec, config: dict, *,
                 frame_hw: tuple[int, int], block_slots: int, reserve: int,
                 make_session=None, kv_bits: int | None = None, kv_group_size: int = 64) -> MemoryPlan:
    """The plan of a loaded MLX model; `make_session(InfiniPotConfig)` enables calibration.

    Args:
        budget: "6GB", "60%", ... or None (DEFAULT_FRACTION of memory).
        model, tokenizer, spec: from session.load_model.  config: its config.json dict.
        frame_hw: (H, W) of the frames that will stream (T = spec.tokens_per_slot(frame_hw),
            plus the slot's text for Qwen3-VL: a slot's rows).
        make_session: builds a StreamSession for a config; one block of blank frames runs
            through a throwaway session to check the computed activations (None: no check).
        kv_bits, kv_group_size: the cache's quantization (None: the compute dtype).
    """
    from ..contract.config import InfiniPotConfig
    from ..contract.specs import DEFAULT_SYSTEM

    probe = memory_probe()
    pieces = spec.pieces
    opening = pieces.system.format(system=DEFAULT_SYSTEM) + pieces.user_open + pieces.video_open
    slot_text = pieces.slot_text_bound(lambda text: tokenizer.encode(text, add_special_tokens=False))
    kwargs = dict(
        tokens_per_slot=spec.tokens_per_slot(frame_hw) + slot_text, block_slots=block_slots,
        reserve=reserve, n_pinned=len(tokenizer.encode(opening, add_special_tokens=False)),
        dtype_bytes=compute_dtype_bytes(model), scores_materialized=not probe.metal,
        resident_bytes=probe.active, kv_bits=kv_bits, kv_group_size=kv_group_size)
    budget_bytes, weights = parse_budget(budget, probe.total), weight_bytes(model)
    plan = plan_from_config(config, budget_bytes, weights, **kwargs)  # refuse before any block runs
    if make_session is None:
        return plan
    probe_session = make_session(InfiniPotConfig(capacity=None, method="full",
                                                 block_slots=block_slots, reserve=reserve))
    measured = measure_block(probe_session, frame_hw)
    del probe_session
    return plan_from_config(config, budget_bytes, weights, measured_activation_bytes=measured, **kwargs)
