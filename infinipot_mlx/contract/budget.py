"""Memory budget -> KV capacity (ALGORITHM.md section 8), and the live memory probe.

The peak memory of a stream is bounded by

    peak <= R + A + C x (kv + c) + margin
    R       resident bytes: the measured model weights (and anything else already held)
    kv      KV bytes per cached token = layers x 2 x H_kv x D x bytes(dtype)
    A       one block's context-free activations: max(vision tower, prefill of L = S x T
            tokens), computed from the config and raised to a calibrated measurement
    c       activation bytes per cached token while a block runs: the attention mask (L bytes),
            the attention scores Hq x L x bytes where attention is not fused (CPU), and the
            working set of a compression (float32 copies of one layer's visual keys)
    margin  MARGIN_FRACTION of the budget

so that, for a budget B, capacity C = floor((B - margin - R - A) / (kv + c)). A budget whose C
is below plan.min_capacity (one block, one kept slot, the prompt and the reserve) is refused,
and the message states the minimum budget. Notation: S temporal slots per block, T tokens per
slot, L = S x T, E hidden size, Hq query heads, H_kv KV heads, D head dim, V vocabulary.

This module is pure arithmetic (numbers, a config.json dict, the dtypes in a checkpoint's
safetensors headers: checkpoint_dtype_bytes); the MLX side (live probes,
the measured weights, the limits, the calibration block and plan_session) is memory.py. Sizes print in decimal units (1 GB = 1e9 bytes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import UserError
from .plan import block_tokens, min_capacity
from .specs import load_class, model_type

DEFAULT_FRACTION = 0.6  # budget when none is given: this share of unified/system memory
MARGIN_FRACTION = 0.05  # kept free for the allocator, Python and small arrays
HIDDEN_COPIES = 5  # residual, normed input, attention output, their sum, RoPE tables (per token)
COMPRESS_F32_COPIES = 6  # float32 vectors per visual token while scoring one layer (TaR, VaN)
UNITS = {"b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
         "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


# ----- model sizes from config.json ----------------------------------------------------------
@dataclass(frozen=True)
class ModelDims:
    """The sizes the memory arithmetic needs, read from a config.json dict."""

    layers: int
    heads: int  # Hq
    kv_heads: int  # H_kv
    head_dim: int  # D
    hidden: int  # E
    intermediate: int
    vocab: int  # V
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch_values: int  # pixel values per vision patch (C x temporal patch x p x p)
    merge: int  # merged patches per token side (Qwen: 2); 1 when frames are pooled (LLaVA)
    frame_patches: int | None  # fixed patches per frame (LLaVA: 27 x 27); None: merge^2 x T
    frames_batched: bool  # all frames of a block attend at once (LLaVA) or one at a time (Qwen)


def model_dims(config: dict) -> ModelDims:
    """ModelDims of a config.json of a registered model type (specs.MODEL_TYPES: its
    vision_dims reads the vision tower's part)."""
    vision_dims = load_class(model_type(config.get("model_type")).vision_dims)
    text = config if "hidden_size" in config else config["text_config"]
    vision = config["vision_config"]
    heads = text["num_attention_heads"]
    common = dict(
        layers=text["num_hidden_layers"], heads=heads, kv_heads=text["num_key_value_heads"],
        head_dim=text.get("head_dim") or text["hidden_size"] // heads, hidden=text["hidden_size"],
        intermediate=text["intermediate_size"], vocab=text["vocab_size"])
    return ModelDims(**common, **vision_dims(vision))


def qwen2_5_vl_vision(vision: dict) -> dict:
    """Qwen2.5-VL: 2-frame temporal patches, 2x2 merge, frames encoded one at a time."""
    patch = vision.get("patch_size", 14)
    return dict(vision_hidden=vision["hidden_size"], vision_intermediate=vision["intermediate_size"],
                vision_heads=vision["num_heads"],
                patch_values=vision.get("in_chans", 3) * vision.get("temporal_patch_size", 2) * patch**2,
                merge=vision.get("spatial_merge_size", 2), frame_patches=None, frames_batched=False)


def qwen2_vl_vision(vision: dict) -> dict:
    """Qwen2-VL: Qwen2.5-VL's patches and merge, no window attention (every layer attends over
    the whole frame, which the frame-at-a-time scores term already counts); the vision width is
    embed_dim and the MLP embed_dim x mlp_ratio (its hidden_size is the language model's)."""
    embed = vision.get("embed_dim", 1280)
    return dict(qwen2_5_vl_vision(vision), vision_hidden=embed,
                vision_intermediate=int(embed * vision.get("mlp_ratio", 4)))


def qwen3_vl_vision(vision: dict) -> dict:
    """Qwen3-VL: Qwen2-VL's frame-at-a-time full attention with 16-px patches (in_channels);
    the DeepStack mergers' outputs are a few slot-sized tensors, within the scores term."""
    patch = vision.get("patch_size", 16)
    return dict(qwen2_5_vl_vision(vision), patch_values=vision.get("in_channels", 3)
                * vision.get("temporal_patch_size", 2) * patch**2)


def llava_onevision_vision(vision: dict) -> dict:
    """LLaVA-OneVision: a fixed SigLIP grid per frame, all frames of a block at once."""
    patch = vision.get("patch_size", 14)
    side = vision["image_size"] // patch
    return dict(vision_hidden=vision["hidden_size"], vision_intermediate=vision["intermediate_size"],
                vision_heads=vision["num_attention_heads"], patch_values=vision.get("num_channels", 3) * patch**2,
                merge=1, frame_patches=side * side, frames_batched=True)


# ----- bytes -------------------------------------------------------------------------------------
def kv_bytes_per_token(dims: ModelDims, dtype_bytes: float) -> float:
    """layers x 2 (K, V) x H_kv x D x bytes (ALGORITHM.md section 8)."""
    return dims.layers * 2 * dims.kv_heads * dims.head_dim * dtype_bytes


def kv_element_bytes(dtype_bytes: float, kv_bits: int | None = None, group_size: int = 64) -> float:
    """Bytes one stored key or value element costs: the compute dtype's, or at kv_bits the
    packed bits plus a scale and a bias (compute dtype) per group (mlx-lm's affine layout)."""
    return dtype_bytes if kv_bits is None else kv_bits / 8 + 2 * dtype_bytes / group_size


def compute_dtype_bytes(held: dict[str, tuple[int, int]]) -> int:
    """Bytes per element of a model's compute dtype, which its KV cache holds: of the floating
    dtypes of its parameters ({dtype name: (bytes per element, bytes held)}), the one holding
    the most bytes (a quantized model's scales and norms; its packed integer weights are not
    floating). 4 (float32) when none is floating. mlx/memory_probe.py applies it to a loaded
    model, checkpoint_dtype_bytes to the files, so that both plans count the same bytes."""
    if not held:
        return 4
    return max(held.values(), key=lambda size_and_bytes: size_and_bytes[1])[0]


SAFETENSORS_FLOATS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def checkpoint_dtype_bytes(model_dir) -> int:
    """compute_dtype_bytes of a checkpoint folder, from its safetensors headers (nothing loaded)."""
    import json
    import struct
    from pathlib import Path

    held: dict[str, tuple[int, int]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            size = SAFETENSORS_FLOATS.get(entry.get("dtype")) if name != "__metadata__" else None
            if size is not None:
                start, stop = entry["data_offsets"]
                held[entry["dtype"]] = (size, held.get(entry["dtype"], (size, 0))[1] + stop - start)
    return compute_dtype_bytes(held)


def vision_block_bytes(dims: ModelDims, slots: int, tokens_per_slot: int, act_bytes: int) -> int:
    """Vision tower activations for one block of `slots` temporal slots (one encoder layer at a time)."""
    seq = dims.frame_patches or dims.merge**2 * tokens_per_slot  # patches per frame
    patches = slots * seq  # P
    per_patch = (dims.patch_values * (4 + 2 * act_bytes)  # float32 pixels, cast, patch layout
                 + (7 * dims.vision_hidden + 3 * dims.vision_intermediate) * act_bytes  # hidden, qkv, MLP
                 + 2 * dims.hidden * act_bytes)  # projector / merger outputs
    scores = (slots if dims.frames_batched else 1) * dims.vision_heads * seq * seq * act_bytes
    return patches * per_patch + scores


def prefill_block_bytes(dims: ModelDims, block: int, act_bytes: int) -> int:
    """Context-free prefill activations of `block` tokens (one decoder layer, and the logits).

    The adapters compute logits for the last token only, hence one V term.
    """
    qkv = (dims.heads + 2 * dims.kv_heads) * dims.head_dim
    per_token = (HIDDEN_COPIES * dims.hidden + 2 * qkv + dims.heads * dims.head_dim
                 + 3 * dims.intermediate)
    return (block * per_token + dims.vocab) * act_bytes


def context_bytes_per_token(dims: ModelDims, block: int, act_bytes: int,
                            scores_materialized: bool) -> int:
    """Activation bytes per cached token while a block runs (c in the module docstring)."""
    prefill = block * (1 + (dims.heads * act_bytes if scores_materialized else 0))  # mask, scores
    compress = dims.kv_heads * dims.head_dim * (COMPRESS_F32_COPIES * 4 + 2 * act_bytes)
    return max(prefill, compress)


# ----- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """A budget split into resident weights, one block's activations and the KV capacity."""

    budget_bytes: int
    weight_bytes: int
    resident_bytes: int  # weights plus anything else already held when planning
    kv_bytes_per_token: float  # as stored: at kv_bits when the cache is quantized
    activation_bytes: int  # A
    context_bytes_per_token: int  # c
    margin_bytes: int
    capacity: int  # tokens per layer, pinned + visual
    tokens_per_slot: int
    block_slots: int
    reserve: int
    n_pinned: int
    computed_activation_bytes: int  # A from the config alone
    measured_activation_bytes: int | None = None  # calibration of one real block
    kv_bits: int | None = None  # None: the compute dtype
    kv_group_size: int = 64
    dtype_bytes: float = 2  # the compute dtype's bytes per element

    @property
    def slots(self) -> int:
        """Temporal slots the capacity holds after the prompt and the reserve."""
        return max(0, (self.capacity - self.reserve - self.n_pinned) // self.tokens_per_slot)

    @property
    def kv_bytes(self) -> int:
        return int(self.capacity * self.kv_bytes_per_token)

    @property
    def peak_bytes(self) -> int:
        """The bound on peak memory: resident + A + capacity x (kv + c)."""
        per_token = self.kv_bytes_per_token + self.context_bytes_per_token
        return int(self.resident_bytes + self.activation_bytes + self.capacity * per_token)

    def line(self) -> str:
        """One line for the CLI."""
        return (f"model {format_bytes(self.weight_bytes)} | KV {format_bytes(self.kv_bytes_per_token)}/token"
                f"{self._quantized_note()}"
                f" | capacity {self.capacity:,} tokens = {self.slots:,} slots of {self.tokens_per_slot}"
                f" | block {self.block_slots} slots ({format_bytes(self.activation_bytes)})"
                f" | peak <= {format_bytes(self.peak_bytes)} of {format_bytes(self.budget_bytes)}")


    def _quantized_note(self) -> str:
        """' at 4 bits (3.6x the tokens of 2-byte KV)' for a quantized cache, else ''."""
        if self.kv_bits is None:
            return ""
        gain = self.dtype_bytes / kv_element_bytes(self.dtype_bytes, self.kv_bits, self.kv_group_size)
        return f" at {self.kv_bits} bits ({gain:.1f}x the tokens of {self.dtype_bytes:g}-byte KV)"


def make_plan(budget_bytes: int, *, weight_bytes: int, kv_per_token: float, activation_bytes: int,
              context_per_token: int, tokens_per_slot: int, block_slots: int, reserve: int,
              n_pinned: int = 0, resident_bytes: int | None = None,
              computed_activation_bytes: int | None = None,
              measured_activation_bytes: int | None = None, kv_bits: int | None = None,
              kv_group_size: int = 64, dtype_bytes: float = 2) -> MemoryPlan:
    """Capacity = floor((B - margin - R - A) / (kv + c)); ValueError below the minimum."""
    resident = max(weight_bytes, resident_bytes or 0)
    margin = int(budget_bytes * MARGIN_FRACTION)
    per_token = kv_per_token + context_per_token
    free = budget_bytes - margin - resident - activation_bytes
    capacity = int(free // per_token) if free > 0 else 0
    needed = min_capacity(tokens_per_slot, block_slots, reserve, n_pinned)
    if capacity < needed:
        minimum = (resident + activation_bytes + needed * per_token) / (1 - MARGIN_FRACTION)
        raise UserError(
            f"a memory budget of {format_bytes(budget_bytes)} cannot hold the model "
            f"({format_bytes(resident)}), one block of {block_slots} slots x {tokens_per_slot} "
            f"tokens ({format_bytes(activation_bytes)} of activations) and the smallest usable "
            f"cache ({needed:,} tokens x {format_bytes(per_token)}); the minimum is "
            f"{_gb(minimum)} GB: raise --memory, or lower --block-slots or --max-pixels")
    return MemoryPlan(budget_bytes, weight_bytes, resident, kv_per_token, activation_bytes,
                      context_per_token, margin, capacity, tokens_per_slot, block_slots, reserve,
                      n_pinned, computed_activation_bytes or activation_bytes,
                      measured_activation_bytes, kv_bits, kv_group_size, dtype_bytes)


def plan_from_config(config: dict, budget_bytes: int, weight_bytes: int, *, tokens_per_slot: int,
                     block_slots: int = 8, reserve: int = 512, n_pinned: int = 0,
                     dtype_bytes: int = 2, scores_materialized: bool = False,
                     resident_bytes: int | None = None,
                     measured_activation_bytes: int | None = None, kv_bits: int | None = None,
                     kv_group_size: int = 64) -> MemoryPlan:
    """The plan of a config.json dict; the measured block activations raise A when larger.

    Args:
        config: config.json of a Qwen2.5-VL or LLaVA-OneVision checkpoint.
        budget_bytes: B.  weight_bytes: the model's parameter bytes.
        tokens_per_slot: T.  block_slots: S.  dtype_bytes: KV cache and activation dtype.
        scores_materialized: True where attention scores are materialized (CPU), False where
            attention is fused (Metal).
        kv_bits, kv_group_size: a quantized cache's bits and group (kv_element_bytes).
        measured_activation_bytes: context-free activations measured on one block, or None.
    """
    dims = model_dims(config)
    block = block_tokens(block_slots, tokens_per_slot)
    computed = max(vision_block_bytes(dims, block_slots, tokens_per_slot, dtype_bytes),
                   prefill_block_bytes(dims, block, dtype_bytes))
    return make_plan(
        budget_bytes, weight_bytes=weight_bytes,
        kv_per_token=kv_bytes_per_token(dims, kv_element_bytes(dtype_bytes, kv_bits, kv_group_size)),
        activation_bytes=max(computed, measured_activation_bytes or 0),
        context_per_token=context_bytes_per_token(dims, block, dtype_bytes, scores_materialized),
        tokens_per_slot=tokens_per_slot, block_slots=block_slots, reserve=reserve,
        n_pinned=n_pinned, resident_bytes=resident_bytes, computed_activation_bytes=computed,
        measured_activation_bytes=measured_activation_bytes, kv_bits=kv_bits,
        kv_group_size=kv_group_size, dtype_bytes=dtype_bytes)


# ----- budget strings ----------------------------------------------------------------------------
def parse_size(text: str, flag: str, share_of: int | None = None) -> int:
    """One size string -> bytes, for every size flag (--memory, the server's byte limits).

    "6GB", "6.5 GiB", "512MB", "1000000B" (decimal units, binary with an i), and with
    `share_of` (the machine's memory in bytes) "60%" of it. A bare number is refused: "6"
    could be 6 bytes or 6 GB, so the unit is asked for. A share is in (0, 100]%; zero or
    negative sizes are refused. UserError (one line, naming `flag`) otherwise.
    """
    forms = "6GB, 512MB, 1000000B" + (" or 60%" if share_of else "")
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if unit == "":
        raise UserError(f"{flag} {text}: give a unit (a bare number could be bytes or GB); write it like {forms}")
    if unit is None or (unit not in UNITS and not (unit == "%" and share_of)):
        raise UserError(f"{flag} {text!r} is not a size; write it like {forms}")
    value = float(match.group(1))
    if unit == "%":
        if not 0 < value <= 100:
            raise UserError(f"{flag} {text} is not a share of memory in (0, 100]%; write it like 60%")
        return int(share_of * value / 100)
    size = int(value * UNITS[unit])
    if size <= 0:
        raise UserError(f"{flag} {text} must be positive; write it like {forms}")
    return size


def parse_budget(text: str | None, total_bytes: int, flag: str = "--memory") -> int:
    """A memory budget (parse_size: "6GB", "60%" of total_bytes, ...) or None
    (DEFAULT_FRACTION of total_bytes) -> bytes; no more than the machine has."""
    if text is None:
        return int(total_bytes * DEFAULT_FRACTION)
    budget = parse_size(text, f"{flag} (the memory budget)", share_of=total_bytes)
    if budget > total_bytes:
        raise UserError(f"{flag} {text}: a memory budget of {format_bytes(budget)} exceeds this machine's "
                        f"memory ({format_bytes(total_bytes)})")
    return budget


def format_bytes(n: float) -> str:
    """Decimal units with three significant digits: 4.6 GB, 57.3 KB, 312 B."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _gb(n: float) -> str:
    """Bytes in GB, rounded up at three significant digits (a minimum must not round down)."""
    gb = n / 1e9
    scale = 10 ** (2 - math.floor(math.log10(gb))) if gb > 0 else 1
    return f"{math.ceil(gb * scale) / scale:.3g}"
