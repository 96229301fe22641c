"""Model adapters (MLX): one file per model_type, found through specs.MODEL_TYPES.

An adapter turns frames and text into embeddings and runs the language model over them
with explicit positions and a cache. It knows nothing of compression.
"""

from __future__ import annotations


def adapter_class(model_type: str):
    """The MLX adapter class of a model_type, from the registry (specs.MODEL_TYPES)."""
    from ...contract.specs import load_class
    from ...contract.specs import model_type as registered

    return load_class(registered(model_type).mlx_adapter)


def token_array(ids):
    """(1, L) int32 token ids from a list, or from an mx array of ids (one token sampled and
    maybe still computing: it is not waited for)."""
    import mlx.core as mx

    if isinstance(ids, mx.array):
        return ids.reshape(1, -1).astype(mx.int32)
    return mx.array([ids], dtype=mx.int32)
