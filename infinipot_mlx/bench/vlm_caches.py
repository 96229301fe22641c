"""mlx-vlm's own KV caches behind the few attributes our streaming loop reads.

The stream benchmark runs the same loop (our adapter, explicit positions, the same
blocks) with mlx-vlm's caches in place of StreamCache, under method "full" so that our
compression never triggers. What mlx-vlm's attention needs it finds on the layer caches
themselves: QuantizedKVCache has `.bits`, so mlx-vlm's scaled_dot_product_attention takes
the quantized path; RotatingKVCache builds its own (windowed) mask, reached through
`make_mask` because create_attention_mask asks the object it is given.

- "mlx_vlm_rotating": RotatingKVCache(max_size=capacity, keep=4), one per layer: what
  mlx-vlm's `--max-kv-size capacity` builds (make_prompt_cache). It drops the oldest
  tokens, text or video alike, and briefly holds max_size - 1 + L tokens after an
  L-token prefill (it trims before appending).
- "mlx_vlm_quant8": QuantizedKVCache(group_size=64, bits=8), one per layer, from the first
  token and with no cap: what `--kv-bits 8` gives once quantization starts (mlx-vlm
  converts every layer's float KVCache with to_quantized(group_size=64, bits=8) once it
  holds --quantized-kv-start tokens, default 5000; here it is quantized from the start).

Notation: H KV heads, n stored tokens per layer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np

from mlx_vlm.models.cache import QuantizedKVCache, RotatingKVCache

from ..mlx.backend import MLXBackend
from ..mlx.cache import StreamCache
from ..contract.rows import LayerStack


class VLMCacheList(LayerStack):
    """A list of mlx-vlm per-layer caches, with what StreamSession reads of a cache.

    mlx-vlm caches do not tell text from video, so every stored token counts as visual
    (n_pinned is 0) and label_next is a no-op.
    """

    def __init__(self, caches: list):
        self.layers = caches
        self.next_position = 0  # logical RoPE position of the next token (set by the session)

    @property
    def n_cached(self) -> int:
        return stored_tokens(self.layers[0])

    @property
    def n_pinned(self) -> int:
        return 0

    @property
    def nbytes(self) -> int:
        """Bytes of the layer buffers as the caches report them (allocated, step-rounded)."""
        return sum(c.nbytes for c in self.layers if c.keys is not None)

    def label_next(self, slot_ids, patch_ids) -> None:
        """mlx-vlm caches keep no (frame, patch) labels."""

    def place_next(self, positions) -> None:
        """1-D RoPE (LLaVA-OneVision's adapter): mlx-vlm's caches rotate new tokens from their
        running offset (every token seen), so they take only positions that continue it, as
        method "full" streams them. ValueError for any other position."""
        first, seen = int(np.asarray(positions).reshape(-1)[0]), int(self.layers[0].offset)
        if first != seen:
            raise ValueError(f"mlx-vlm's caches place the next token at {seen}, not at {first}")

    def snapshot(self) -> tuple:
        """Shallow copies of the layer caches (their counters; the arrays are shared).

        Best effort, for the session's transactions: mlx-vlm's caches write in place, so a
        RotatingKVCache that has wrapped around cannot be rolled back exactly. The benchmark
        never interrupts a session.
        """
        return self.next_position, [copy.copy(c) for c in self.layers]

    def restore(self, snapshot: tuple) -> None:
        self.next_position, self.layers = snapshot[0], list(snapshot[1])


def stored_tokens(cache) -> int:
    """Tokens a mlx-vlm layer cache holds now (n)."""
    if cache.keys is None:
        return 0
    if isinstance(cache, RotatingKVCache):  # its offset counts every token ever seen
        return min(cache.offset, cache.keys.shape[2])
    return cache.offset


def rotating(capacity: int) -> Callable[[int], VLMCacheList]:
    """Factory: num_layers -> RotatingKVCache list, as `--max-kv-size capacity` builds it."""
    return lambda num_layers: VLMCacheList(
        [RotatingKVCache(max_size=capacity, keep=4) for _ in range(num_layers)])


def quantized(bits: int = 8, group_size: int = 64) -> Callable[[int], VLMCacheList]:
    """Factory: num_layers -> QuantizedKVCache list, as `--kv-bits bits` gives it, no cap."""
    return lambda num_layers: VLMCacheList(
        [QuantizedKVCache(group_size=group_size, bits=bits) for _ in range(num_layers)])


class BenchBackend(MLXBackend):
    """MLXBackend with a chosen cache class and no end-of-sequence id (answers run to max);
    `stamps` holds the time of every sampling (one per answer token, pipelined or not)."""

    def __init__(self, cache_factory=None):
        self.cache_factory, self.stamps = cache_factory, []

    def make_sampler(self, temperature: float, top_p: float):
        sample = super().make_sampler(temperature, top_p)

        def timed(logits):
            self.stamps.append(time.perf_counter())
            return sample(logits)

        return timed

    def new_cache(self, num_layers: int):
        return self.cache_factory(num_layers) if self.cache_factory else StreamCache(num_layers)

    def eos_ids(self, tokenizer, spec) -> list[int]:
        return []
