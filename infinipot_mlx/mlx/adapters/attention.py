"""The attention of one query token over a layer's cached keys, for evidence (evidence.py).

Shared by the MLX adapters' forward_attending; the mirror of reference/adapters/attention.py
(attention_mass, the same arguments), plus attention_probs, which the reference reads from
transformers instead. Notation: Hq query heads, H_kv KV heads
(Hq = G * H_kv, grouped-query attention), n cached rows, D head dim.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def attention_probs(query: mx.array, keys: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) of one token over a layer's cache, computed from its queries
    (the reference takes the same probabilities from transformers' eager attention).

    Args:
        query: (1, Hq, D) the token's queries after RoPE.
        keys: (1, H_kv, n, D) the layer's cached keys after RoPE (the token's own included).
    Returns:
        (Hq, n) float32, each row summing to 1.
    """
    n_kv, n, dim = keys.shape[1:]
    q = query.reshape(n_kv, -1, dim).astype(mx.float32)  # (H_kv, G, D), Hq = H_kv * G in order
    scores = (q @ keys[0].astype(mx.float32).transpose(0, 2, 1)) * scale  # (H_kv, G, n)
    return mx.softmax(scores, axis=-1).reshape(-1, n)  # (Hq, n)


def attention_mass(probs: mx.array, n_kv: int) -> np.ndarray:
    """(Hq, n) one token's attention probabilities -> (H_kv, n) float32, summed over each KV
    head's G query heads (each row sums to G)."""
    return np.array(probs.astype(mx.float32).reshape(n_kv, -1, probs.shape[-1]).sum(axis=1))
