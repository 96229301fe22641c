"""What the streaming loop (session.py) asks of a model adapter and of an array backend.

Both backends implement these, name for name: `mlx/adapters/` and `mlx/backend.MLXBackend`,
`reference/adapters/` and `reference/backend.TorchBackend` (PyTorch). Arrays are the
backend's own (mx.array or torch.Tensor); positions and labels are numpy. Notation: n
frames, S slots, T tokens per slot, L new tokens, E hidden size, V vocabulary, H KV heads,
n_c cached slots, D head dim. No array library is imported here.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import UserError
from ..contract.specs import load_class


@runtime_checkable
class Adapter(Protocol):
    """Embeds frames and text and runs the LM over new tokens; knows nothing of compression."""

    spec: Any  # specs.ModelSpec
    tokenizer: Any

    def encode_slots(self, frames: np.ndarray) -> Any:
        """Vision tower on one block: (n, H, W, 3) uint8 -> (S*T, E) embeddings."""

    def embed_tokens(self, ids: Any) -> Any:
        """Token ids -> (1, L, E) embeddings."""

    def forward(self, embeds: Any, positions: np.ndarray, cache: Any) -> Any:
        """The LM over L new tokens at explicit positions, through the cache -> logits (1, 1, V)."""

    def forward_attending(self, embeds: Any, positions: np.ndarray, cache: Any) -> tuple[Any, list]:
        """forward(), and the last token's attention over the cache: per layer (H_kv, n)
        mass summed over each KV head's query heads (evidence.py)."""

    def video_close_embeds(self) -> Any | None:
        """(1, L, E) embeddings the model puts once after a video (LLaVA-OV: image_newline), or None."""

    def key_rotation(self) -> Callable[[Any, np.ndarray], Any]:
        """The model's RoPE as rope(keys (1, H, n_c, D), delta (H, n_c)) for `compact` positions;
        a UserError for models that cannot be renumbered (M-RoPE)."""


@runtime_checkable
class Backend(Protocol):
    """The array-library hooks of a session: adapter, cache, selection, sampling, memory."""

    def adapter(self, model: Any, tokenizer: Any, spec: Any) -> Adapter:
        """The model type's adapter on this backend (specs.MODEL_TYPES)."""

    def new_cache(self, num_layers: int) -> Any:
        """An empty StreamCache of num_layers layers."""

    def select_tokens(self, keys: Any, values: Any, **kwargs) -> Any:
        """The one selection step: (H, K) indices of the visual tokens to keep (select.py)."""

    def sync(self, output: Any, cache: Any = None) -> None:
        """Wait for the output (and the cache) to be computed, so timings and memory are real."""

    def to_numpy(self, x: Any) -> np.ndarray:
        """A host copy; half-precision floats become float32."""

    def to_host_bits(self, x: Any) -> tuple[np.ndarray, str]:
        """A bit-exact host copy and its dtype's name (bfloat16 as uint16): memories.py."""

    def from_host_bits(self, a: np.ndarray, name: str) -> Any:
        """The inverse of to_host_bits, on the backend's device."""

    def make_sampler(self, temperature: float, top_p: float) -> Callable[[Any], Any]:
        """logits (V,) -> a token id: greedy at temperature 0. It may be a backend scalar
        still computing; int() gives the id."""

    def start(self, *arrays: Any) -> None:
        """Begin computing arrays without waiting for them (MLX; eager backends do nothing)."""

    def eos_ids(self, tokenizer: Any, spec: Any) -> list[int]:
        """The token ids that end an answer (answer.eos_ids)."""

    def memory(self) -> tuple[int, int]:
        """(active, peak) bytes."""

    def reset_peak_memory(self) -> None:
        """Start the peak over."""


BACKENDS = {  # name -> (module, class); imported only when asked for
    "mlx": ("infinipot_mlx.mlx.backend", "MLXBackend"),
    "reference": ("infinipot_mlx.reference.backend", "TorchBackend"),
}


def make_backend(backend: str | Backend) -> Backend:
    """A Backend from its name in BACKENDS, or the object itself."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return load_class(BACKENDS[backend])()
