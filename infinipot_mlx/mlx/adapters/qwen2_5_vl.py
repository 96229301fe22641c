"""Qwen2.5-VL on mlx-vlm's model classes: per-block vision, explicit M-RoPE, our cache.

The language model's inner Qwen2Model is called with explicit position_ids (3, 1, L) and
our cache list, so mlx-vlm's LanguageModel position state (_position_ids, _rope_deltas)
is never used: every prefill and decode position comes from infinipot_mlx.positions.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ...errors import UserError
from ...pixels import qwen_patchify
from ...specs import ModelSpec


class Qwen2_5_VLAdapter:
    """Embed frames and text, and run the LM with explicit positions."""

    def __init__(self, model, tokenizer, spec: ModelSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.lm = model.language_model

    def encode_slots(self, frames: np.ndarray) -> mx.array:
        """Vision tower on one block. (n, H, W, 3) uint8 -> (S*T, E) visual embeddings."""
        vc = self.model.config.vision_config
        pixels, grid_thw = qwen_patchify(
            frames, self.spec.image_mean, self.spec.image_std,
            vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size,
        )
        dtype = self.model.vision_tower.patch_embed.proj.weight.dtype
        grid = mx.array([grid_thw], dtype=mx.int32)  # (1, 3)
        return self.model.vision_tower(mx.array(pixels).astype(dtype), grid, output_hidden_states=False)

    def video_close_embeds(self) -> None:
        """Qwen2.5-VL puts nothing after a video but its <|vision_end|> text token."""
        return None

    def key_rotation(self):
        """M-RoPE keys are not renumbered: Qwen2.5-VL streams under `absolute` positions."""
        raise UserError("the compact position policy needs a 1-D RoPE model (LLaVA-OneVision); "
                        f"{self.spec.model_type} uses M-RoPE, so use position_policy='absolute'")

    def embed_tokens(self, ids: list[int]) -> mx.array:
        """Token ids -> (1, L, E) embeddings."""
        return self.lm.model.embed_tokens(mx.array([ids], dtype=mx.int32))

    def forward(self, embeds: mx.array, positions: np.ndarray, cache) -> mx.array:
        """Run the LM over new tokens. embeds (1, L, E), positions (3, L) -> last-token logits (1, 1, V)."""
        position_ids = mx.array(positions[:, None, :].astype(np.int32))  # (3, 1, L)
        if embeds.ndim == 2:
            embeds = embeds[None]  # (1, L, E)
        hidden = self.lm.model(None, inputs_embeds=embeds, cache=cache, position_ids=position_ids)
        hidden = hidden[:, -1:]  # only the last token's logits are ever used: (1, 1, E)
        if self.lm.args.tie_word_embeddings:
            return self.lm.model.embed_tokens.as_linear(hidden)
        return self.lm.lm_head(hidden)
