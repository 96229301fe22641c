"""Model adapters (PyTorch reference): one file per model_type, found through specs.MODEL_TYPES.

The mirror of infinipot_mlx/adapters: the same class names and methods on transformers'
models. An adapter turns frames and text into embeddings and runs the language model over
them with explicit positions and a cache. It knows nothing of compression.
"""

from __future__ import annotations


def adapter_class(model_type: str):
    """The reference adapter class of a model_type, from the registry (specs.MODEL_TYPES)."""
    from ...contract.specs import load_class
    from ...contract.specs import model_type as registered

    return load_class(registered(model_type).reference_adapter)


def cache_keyword(module) -> str:
    """transformers' name for the KV-cache argument of `module.forward`.

    `cache` since transformers 5.24 (where `past_key_values` warns as deprecated, to be removed
    in 5.40), `past_key_values` before it. Passing `cache=` to an older model would not fail:
    it would vanish into **kwargs and the model would run without our cache, so ask the signature.
    """
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def token_array(ids, device):
    """(1, L) long token ids on `device` from a list, or from a tensor of ids (the mirror of
    the MLX adapters' token_array)."""
    import torch

    if isinstance(ids, torch.Tensor):
        return ids.reshape(1, -1).to(device=device, dtype=torch.long)
    return torch.tensor([ids], dtype=torch.long, device=device)
