"""The MLX backend of a StreamSession (session.py): mlx arrays and mlx-vlm models.

The mirror of reference/backend.py (MLXBackend <-> TorchBackend, the same load_model and load):

    session = infinipot_mlx.load("path/to/Qwen2.5-VL", InfiniPotConfig(capacity=6144))
    session.add_frames(frames)            # (n, H, W, 3) uint8, any number of times
    for piece in session.ask("What happened?"):
        print(piece, end="")
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..stream.answer import eos_ids
from ..contract.config import InfiniPotConfig
from ..contract.model_path import (DEFAULT_MODELS, ModelPathError, resolve_model_path)  # noqa: F401  (re-exported)
from ..stream.session import StreamSession
from ..contract.specs import load_spec
from .adapters import adapter_class
from .cache import StreamCache
from .select import select_tokens

DEFAULT_MODEL = DEFAULT_MODELS["mlx"]


class MLXBackend:
    """The array-library hooks the shared streaming loop needs, for MLX (protocols.Backend)."""

    select_tokens = staticmethod(select_tokens)
    eos_ids = staticmethod(eos_ids)  # (tokenizer, spec) -> sorted stop ids, shared (answer.py)

    def adapter(self, model, tokenizer, spec):
        """The model type's MLX adapter (adapters/, found through specs.MODEL_TYPES)."""
        return adapter_class(spec.model_type)(model, tokenizer, spec)

    def new_cache(self, num_layers: int) -> StreamCache:
        """An empty cache in the compute dtype (the session quantizes it: LayerStack.maybe_quantize)."""
        return StreamCache(num_layers)

    def sync(self, output, cache: StreamCache | None = None) -> None:
        """Materialize lazy arrays so timings and memory are real."""
        arrays = [] if output is None else [output]
        if cache is not None:
            arrays += [a for layer in cache.layers for a in (layer.keys, layer.values) if a is not None]
        mx.eval(*arrays)

    def to_numpy(self, x) -> np.ndarray:
        """A host numpy copy (bfloat16/float16 logits become float32: numpy has no bfloat16)."""
        if mx.issubdtype(x.dtype, mx.floating) and x.dtype != mx.float32:
            x = x.astype(mx.float32)
        return np.array(x)

    def to_host_bits(self, x) -> tuple[np.ndarray, str]:
        """A bit-exact host copy and its dtype's name (bfloat16 travels as uint16)."""
        name = str(x.dtype).rpartition(".")[2]
        return np.array(x.view(mx.uint16) if x.dtype == mx.bfloat16 else x), name

    def from_host_bits(self, a: np.ndarray, name: str):
        """The inverse of to_host_bits."""
        x = mx.array(a)
        return x.view(mx.bfloat16) if name == "bfloat16" else x.astype(getattr(mx, name))

    def make_sampler(self, temperature: float, top_p: float):
        """logits (V,) -> token id, an mx scalar not yet computed (int() waits for it);
        greedy at temperature 0 (mlx-lm's sampler otherwise)."""
        if temperature <= 0:
            return lambda logits: mx.argmax(logits)
        from mlx_lm.sample_utils import make_sampler

        sample = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)

        def draw(logits):
            logits = logits.astype(mx.float32)
            return sample((logits - mx.logsumexp(logits))[None])[0]  # log-probabilities

        return draw

    def start(self, *arrays) -> None:
        """Begin computing `arrays` without waiting (mlx-lm's pipelined decode)."""
        mx.async_eval(*arrays)

    def memory(self) -> tuple[int, int]:
        """(active, peak) bytes held by MLX."""
        return mx.get_active_memory(), mx.get_peak_memory()

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()


def seed(n: int) -> None:
    """Seed the sampler (greedy decoding needs none)."""
    mx.random.seed(n)


def load_model(path_or_repo: str):
    """(model, tokenizer, spec, path) through mlx_vlm.load; UserError for a folder it cannot use."""
    from mlx_vlm import load as vlm_load

    from .. import _blas
    from ..contract.model_path import require_weights

    _blas.warn_blas_error()  # an INFINIPOT_BLAS that failed to load: MLX runs on the slow BLAS
    path = resolve_model_path(path_or_repo)
    spec = load_spec(path)
    require_weights(path)  # mlx_vlm.load answers a folder without weights with a code snippet
    model, processor = vlm_load(str(path))
    tokenizer = getattr(processor, "tokenizer", processor)
    return model, tokenizer, spec, path


def load(path_or_repo: str = DEFAULT_MODEL, config: InfiniPotConfig | None = None, **kwargs) -> StreamSession:
    """Load a checkpoint and open a StreamSession on it.

    Args:
        path_or_repo: local folder or hub repo id of a Qwen2.5-VL (or LLaVA-OneVision) model.
        config: compression settings (default InfiniPotConfig()).
        **kwargs: fps, system_prompt, record_kept, check_cap (see session.StreamSession).
    """
    model, tokenizer, spec, path = load_model(path_or_repo)
    return StreamSession(model, tokenizer, spec, config, MLXBackend(), model_dir=path, **kwargs)
