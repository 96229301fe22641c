"""The attention of one query token over a layer's cached keys, for evidence (evidence.py).

The mirror of mlx/adapters/attention.py, computed independently: transformers' own eager
attention returns the probabilities (output_attentions), which are then summed per KV
head. Notation: Hq query heads, H_kv KV heads (Hq = G * H_kv), n cached rows.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def attention_mass(probs: torch.Tensor, n_kv: int) -> np.ndarray:
    """(Hq, n) one token's attention probabilities -> (H_kv, n) float32, summed over each KV
    head's G query heads (each row sums to G)."""
    return probs.float().reshape(n_kv, -1, probs.shape[-1]).sum(dim=1).cpu().numpy()


@contextmanager
def eager_attention(model):
    """Run `model` with transformers' eager attention (the one that returns probabilities)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)
