"""The attention of one query token over a layer's cached keys, for evidence (evidence.py).

Shared by the MLX adapters' forward_attending. Notation: Hq query heads, H_kv KV heads
(Hq = G * H_kv, grouped-query attention), n cached rows, D head dim.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def attention_mass(query: mx.array, keys: mx.array, scale: float) -> np.ndarray:
    """softmax(q k^T * scale) of one token, summed over each KV head's query heads.

    Args:
        query: (1, Hq, D) the token's queries after RoPE.
        keys: (1, H_kv, n, D) the layer's cached keys after RoPE (the token's own included).
    Returns:
        (H_kv, n) float32: each row sums to G (one unit of mass per query head).
    """
    n_kv, n, dim = keys.shape[1:]
    q = query.reshape(n_kv, -1, dim).astype(mx.float32)  # (H_kv, G, D)
    scores = (q @ keys[0].astype(mx.float32).transpose(0, 2, 1)) * scale  # (H_kv, G, n)
    return np.array(mx.softmax(scores, axis=-1).sum(axis=1))  # (H_kv, n)
