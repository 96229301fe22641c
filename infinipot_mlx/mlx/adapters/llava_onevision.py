"""LLaVA-OneVision on mlx-vlm's model classes: per-block SigLIP, pooled video tokens, 1-D RoPE.

Vision: each block of frames goes through mlx-vlm's own `get_video_features` (SigLIP, the
projector, the model's 2x2 bilinear pooling with ceil: 27x27 -> 14x14 = 196 tokens per
frame at 384 px). That function appends one `image_newline` per call; a per-block call
drops it, and `video_close_embeds` gives it back once, after the whole video segment, where
the model places it (the session prefills it when the video closes).

Positions: mlx-vlm's Qwen2 attention takes no position_ids; it rotates the L new tokens to
cache.offset .. cache.offset + L - 1, reading `offset` before `update_and_fetch`. 1-D
positions of one forward are always consecutive, so `forward` places them on our cache
(`place_next`) and the cache reports the first one as its `offset`. No mlx-vlm class is
subclassed or patched, and the cache keeps each slot's position for the `compact` policy,
whose key re-rotation (`key_rotation`) uses the attention's own RoPE module.

Notation: n frames (one slot each), T tokens per frame, L new tokens, E hidden size,
V vocabulary, H KV heads, D head dim.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import UserError
from ...contract.pixels import siglip_frames
from ...contract.specs import ModelSpec
from . import token_array
from .attention import attention_mass, attention_probs


class KeyRotation:
    """R(delta) per cached slot with the model's own RoPE module (rotate-half, rope_theta)."""

    def __init__(self, rope: nn.Module):
        if type(rope) is not nn.RoPE:
            raise UserError(f"the compact position policy supports plain RoPE only, not "
                             f"{type(rope).__name__}; use position_policy='absolute'")
        self.rope = rope

    def __call__(self, keys: mx.array, delta: np.ndarray) -> mx.array:
        """keys (1, H, n, D) at positions p -> keys at p + delta; delta (H, n) ints.

        Computed in float32 and rounded once to the keys' dtype (bfloat16 keys would
        otherwise be rounded at every step of the rotation)."""
        _, heads, n, dim = keys.shape
        flat = keys.reshape(heads * n, 1, 1, dim).astype(mx.float32)  # one batch row per slot
        offsets = mx.array(np.asarray(delta, np.int32).reshape(-1))  # (H*n,) its own offset each
        return self.rope(flat, offset=offsets).reshape(1, heads, n, dim).astype(keys.dtype)


class LlavaOnevisionAdapter:
    """Embed frames and text, and run the LM with explicit 1-D positions."""

    def __init__(self, model, tokenizer, spec: ModelSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.lm = model.language_model

    def encode_slots(self, frames: np.ndarray) -> mx.array:
        """Vision tower, projector and pooling on one block. (n, S, S, 3) uint8 -> (n*T, E)."""
        image_size = self.model.config.vision_config.image_size
        pixels = siglip_frames(frames, self.spec.image_mean, self.spec.image_std, image_size)
        dtype = self.model.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype  # never quantized
        features = self.model.get_video_features(mx.array(pixels).astype(dtype))  # (n*T [+1], E)
        n_tokens = len(frames) * self.spec.tokens_per_slot(self.spec.frame_size)
        # drop this call's image_newline (video_close_embeds has it); text dtype, as mlx-vlm's merge
        return features[:n_tokens].astype(self._text_dtype())

    def video_close_embeds(self) -> mx.array | None:
        """(1, 1, E) image_newline, placed once after a video segment; None if the model has none."""
        newline = self.model.image_newline
        return None if newline is None else newline[None, None].astype(self._text_dtype())

    def _text_dtype(self) -> mx.Dtype:
        """dtype of the token embeddings (quantized embeddings compute in their scales' dtype)."""
        embed = self.lm.model.embed_tokens
        return getattr(embed, "scales", embed.weight).dtype

    def embed_tokens(self, ids) -> mx.array:
        """Token ids (a list, or an mx array of them) -> (1, L, E) embeddings."""
        return self.lm.model.embed_tokens(token_array(ids))

    def key_rotation(self) -> KeyRotation:
        """The RoPE rotation the cache applies to move stored keys (compact policy)."""
        return KeyRotation(self.lm.model.layers[0].self_attn.rope)

    def forward(self, embeds: mx.array, positions: np.ndarray, cache) -> mx.array:
        """Run the LM over new tokens. embeds (1, L, E), positions (L,) -> last-token logits (1, 1, V)."""
        positions = np.asarray(positions)
        if positions.ndim != 1 or np.any(np.diff(positions) != 1):
            raise ValueError("LLaVA-OneVision takes consecutive 1-D positions within one forward")
        cache.place_next(positions)  # the cache's offset becomes positions[0] for this forward
        if embeds.ndim == 2:
            embeds = embeds[None]  # (1, L, E)
        hidden = self.lm.model(None, cache=cache, input_embeddings=embeds)  # (1, L, E)
        return self._last_logits(hidden)

    def _last_logits(self, hidden: mx.array) -> mx.array:
        hidden = hidden[:, -1:]  # only the last token's logits are ever used: (1, 1, E)
        if self.lm.config.tie_word_embeddings:
            return self.lm.model.embed_tokens.as_linear(hidden)
        return self.lm.lm_head(hidden)

    def forward_attending(self, embeds: mx.array, positions: np.ndarray, cache) -> tuple[mx.array, list]:
        """forward(), and the last token's attention over the cache: per layer (H_kv, n_cached)
        probability mass summed over each KV head's query heads (evidence.py).

        The decoder loop of mlx-vlm's Qwen2Model, layer by layer with its own modules, so the
        last token's queries (input_layernorm, q_proj, the same RoPE at the cache's offset)
        can be read.
        """
        from mlx_vlm.models.base import create_attention_mask

        positions = np.asarray(positions)
        cache.place_next(positions)
        h = embeds if embeds.ndim == 3 else embeds[None]  # (1, L, E)
        model = self.lm.model
        mask = create_attention_mask(h, cache[0])
        masses = []
        for layer, c in zip(model.layers, cache):
            attn = layer.self_attn
            q = attn.q_proj(layer.input_layernorm(h)).reshape(1, h.shape[1], attn.n_heads, -1).transpose(0, 2, 1, 3)
            q = attn.rope(q, offset=c.offset)  # before the layer appends: the new tokens' offset
            h = layer(h, mask, c)
            masses.append(attention_mass(attention_probs(q[:, :, -1], c.dense_keys(), attn.scale), self.spec.kv_heads))
        return self._last_logits(model.norm(h)), masses
