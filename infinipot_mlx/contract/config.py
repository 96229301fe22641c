"""InfiniPotConfig: the compression settings of a stream, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from ..deprecated import accepts_old_names, old_name
from ..errors import UserError
from .plan import DEFAULT_BLOCK_SLOTS, check_keep, keep_target, block_tokens


@dataclass(frozen=True)
class Method:
    """A compression method. Each backend's select.py implements it as the function `name`."""

    name: str
    bounded: bool  # holds the cache under a capacity (False: no cap, the uncompressed reference)
    summary: str


METHODS = {m.name: m for m in (  # the one method registry: CLIs, config and both backends read it
    Method("infinipot_v", True, "InfiniPot-V: TaR (temporal redundancy) and VaN (value norm) shares"),
    Method("uniform", True, "an even stride over the cached visual tokens"),
    Method("sliding_window", True, "the newest visual tokens"),
    Method("full", False, "no compression and no cap (the reference point)"),
)}
POSITION_POLICIES = ("absolute", "compact", "auto")
DEFAULT_CAPACITY = 6144  # tokens per layer: the one default cap (the CLIs', the server's, load()'s)
DEFAULT_RESERVE = 512  # tokens kept free under the cap for a question and its answer
DEFAULT_FPS = 2.0  # frames sampled per second (the front ends' --fps; StreamSession's fps)
KV_BITS = (4, 8)  # --kv-bits: affine quantization of the stored keys and values (mlx-lm's)
KV_GROUP_SIZES = (32, 64, 128)  # --kv-group-size: what mx.quantize accepts; it must divide head_dim
DEFAULT_KV_GROUP_SIZE = 64  # mlx-lm's default


@dataclass(frozen=True)
class InfiniPotConfig:
    """Settings of ALGORITHM.md sections 3-6.

    Args:
        capacity: hard cap on cached tokens per layer (pinned + visual); None only for
            method "full" (no cap).
        block_slots: temporal slots prefilled per block; None (the default)
            chooses the largest block that keeps at least as many slots as it brings,
            up to 8 (plan.auto_block_slots), once the frame size is known.
        reserve: tokens kept free for a question and its answer.
        method: one of METHODS.
        tar_ratio: share of K chosen by TaR (1 = TaR only, 0 = VaN only).
        recent_ratio: share of the cached slots used as TaR's recent reference.
        van_pooling: layer-adaptive average pooling of the VaN map.
        position_policy: "absolute", "compact", or "auto" (the model's default).
        kv_bits: None (keys and values in the compute dtype), 4 or 8: the cache stores them
            quantized (affine, per group of kv_group_size along the head dim; mlx-lm's
            QuantizedKVCache), and each row keeps the bytes it was stored with.
        kv_group_size: elements per quantization group (32, 64 or 128; divides head_dim).
        quantized_kv_start: stored tokens at which the cache switches to quantized storage
            (mlx-lm's --quantized-kv-start; 0, the default here, quantizes from the first
            token, so a capacity planned at kv_bits holds from the start).
    """

    capacity: int | None = DEFAULT_CAPACITY
    block_slots: int | None = None
    reserve: int = DEFAULT_RESERVE
    method: str = "infinipot_v"
    tar_ratio: float = 0.5
    recent_ratio: float = 0.25
    van_pooling: bool = False
    position_policy: str = "auto"
    kv_bits: int | None = None
    kv_group_size: int = DEFAULT_KV_GROUP_SIZE
    quantized_kv_start: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.position_policy not in POSITION_POLICIES:
            raise UserError(
                f"unknown position policy {self.position_policy!r}; "
                f"choose one of {', '.join(POSITION_POLICIES)}"
            )
        _require(self.block_slots is None or (isinstance(self.block_slots, int) and self.block_slots >= 1),
                 f"block_slots must be a positive integer, got {self.block_slots!r}")
        _require(isinstance(self.reserve, int) and self.reserve >= 0,
                 f"reserve must be a non-negative integer, got {self.reserve!r}")
        _require(0.0 <= self.tar_ratio <= 1.0, f"tar_ratio must lie in [0, 1], got {self.tar_ratio}")
        _require(0.0 < self.recent_ratio <= 1.0,
                 f"recent_ratio must lie in (0, 1], got {self.recent_ratio}")
        _require(self.kv_bits is None or self.kv_bits in KV_BITS,
                 f"kv_bits must be one of {', '.join(map(str, KV_BITS))} (or None), got {self.kv_bits!r}")
        _require(self.kv_group_size in KV_GROUP_SIZES, f"kv_group_size must be one of "
                 f"{', '.join(map(str, KV_GROUP_SIZES))}, got {self.kv_group_size!r}")
        _require(isinstance(self.quantized_kv_start, int) and self.quantized_kv_start >= 0,
                 f"quantized_kv_start must be a non-negative integer, got {self.quantized_kv_start!r}")
        if self.capacity is None:
            _require(not METHODS[self.method].bounded,
                     f"method {self.method!r} needs a capacity (a KV budget in tokens)")
        else:
            _require(isinstance(self.capacity, int) and self.capacity > self.reserve,
                     f"capacity must be an integer above the reserve ({self.reserve} tokens), "
                     f"got {self.capacity!r}")

    block_frames = old_name("block_frames")  # the name before 0.2

    @property
    def bounded(self) -> bool:
        """False for the uncompressed reference point (method full)."""
        return METHODS[self.method].bounded

    @property
    def quantized(self) -> bool:
        """True when the cache stores keys and values at kv_bits."""
        return self.kv_bits is not None

    def check_head_dim(self, head_dim: int) -> None:
        """UserError when kv_group_size does not divide the model's head dimension."""
        if self.quantized and head_dim % self.kv_group_size:
            raise UserError(f"--kv-group-size {self.kv_group_size} does not divide this model's head "
                            f"dimension ({head_dim}); choose one of "
                            f"{', '.join(str(g) for g in KV_GROUP_SIZES if head_dim % g == 0) or 'none'}")

    def check_fits(self, tokens_per_slot: int, n_pinned: int = 0) -> None:
        """Raise ValueError if the capacity cannot hold one block and one kept slot."""
        if not self.bounded:
            return
        incoming = block_tokens(self.block_slots or DEFAULT_BLOCK_SLOTS, tokens_per_slot)
        check_keep(keep_target(self.capacity, self.reserve, n_pinned, incoming), tokens_per_slot)


InfiniPotConfig.__init__ = accepts_old_names(InfiniPotConfig.__init__)  # block_frames= (before 0.2)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)
