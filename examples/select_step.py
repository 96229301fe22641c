"""The selection step on its own arrays: which visual tokens InfiniPot-V keeps.

    python examples/select_step.py

One layer's visual keys and values, (H, N, D): 32 frames of 64 tokens for 2 KV heads. Keep
24 frames' worth per head: the recent frames, the most novel ones along time (TaR), then the
largest value norms (VaN). Frames 0-7 repeat the recent frames, so TaR drops them first.
The MLX step and the PyTorch reference keep the same tokens.
"""

import numpy as np

import infinipot_mlx  # noqa: F401  (loads an optimized BLAS before MLX on Linux)
from infinipot_mlx import select_tokens
from infinipot_mlx.reference import select_tokens as reference_select_tokens

rng = np.random.default_rng(0)
heads, frames, tokens, dim = 2, 32, 64, 128
keys = rng.standard_normal((heads, frames * tokens, dim), dtype=np.float32)
values = rng.standard_normal((heads, frames * tokens, dim), dtype=np.float32)
keys[:, : 8 * tokens] = keys[:, 24 * tokens:]  # frames 0-7 look like the 8 recent frames: redundant

kept = np.array(select_tokens(keys, values, tokens_per_slot=tokens, keep=24 * tokens))  # (H, K)
same = np.array_equal(np.sort(kept, 1), np.sort(reference_select_tokens(keys, values, tokens_per_slot=tokens,
                                                                         keep=24 * tokens).numpy(), 1))
per_frame = np.bincount(kept[0] // tokens, minlength=frames)
print(f"kept {kept.shape[1]} of {keys.shape[1]} tokens per head; MLX and reference agree: {same}")
print("head 0, tokens kept per frame:", " ".join(map(str, per_frame)))
