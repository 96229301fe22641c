"""Model adapters (PyTorch reference): one file per model_type, found by `adapter_class`.

The mirror of infinipot_mlx/adapters: the same class names and methods on transformers'
models. An adapter turns frames and text into embeddings and runs the language model over
them with explicit positions and a cache. It knows nothing of compression.
"""

from __future__ import annotations

ADAPTERS = {
    "qwen2_5_vl": ("infinipot_mlx.reference.adapters.qwen2_5_vl", "Qwen2_5_VLAdapter"),
    "llava_onevision": ("infinipot_mlx.reference.adapters.llava_onevision", "LlavaOnevisionAdapter"),
}


def adapter_class(model_type: str):
    """The reference adapter class for a model_type (ValueError if unsupported)."""
    import importlib

    if model_type not in ADAPTERS:
        raise ValueError(f"no reference adapter for model type {model_type!r}; supported: {', '.join(ADAPTERS)}")
    module, name = ADAPTERS[model_type]
    return getattr(importlib.import_module(module), name)


def cache_keyword(module) -> str:
    """transformers' name for the KV-cache argument of `module.forward`.

    `cache` since transformers 5.24 (where `past_key_values` warns as deprecated, to be removed
    in 5.40), `past_key_values` before it. Passing `cache=` to an older model would not fail:
    it would vanish into **kwargs and the model would run without our cache, so ask the signature.
    """
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
