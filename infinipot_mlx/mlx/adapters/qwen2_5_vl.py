"""Qwen2.5-VL on mlx-vlm's model classes: per-block vision, explicit M-RoPE, our cache.

The language model's inner Qwen2Model is called with explicit position_ids (3, 1, L) and
our cache list, so mlx-vlm's LanguageModel position state (_position_ids, _rope_deltas)
is never used: every prefill and decode position comes from infinipot_mlx.contract.positions.

Notation: n sampled frames, S = n / 2 temporal slots, T tokens per slot, L new tokens,
E hidden size, V vocabulary.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ...errors import UserError
from ...contract.pixels import qwen_patchify
from ...contract.specs import ModelSpec
from . import token_array
from .attention import attention_mass, attention_probs


class Qwen2_5_VLAdapter:
    """Embed frames and text, and run the LM with explicit positions."""

    language_module = "mlx_vlm.models.qwen2_5_vl.language"  # its M-RoPE (forward_attending)

    def __init__(self, model, tokenizer, spec: ModelSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.lm = model.language_model

    def encode_slots(self, frames: np.ndarray) -> mx.array:
        """Vision tower on one block. (n, H, W, 3) uint8 -> (S*T, E) visual embeddings."""
        return self.model.vision_tower(*self._vision_inputs(frames), output_hidden_states=False)

    def _vision_inputs(self, frames: np.ndarray) -> tuple[mx.array, mx.array]:
        """(n, H, W, 3) uint8 -> pixel rows (S*4T, C*tp*p*p) in the tower's dtype, grid (1, 3)."""
        vc = self.model.config.vision_config
        pixels, grid_thw = qwen_patchify(
            frames, self.spec.image_mean, self.spec.image_std,
            vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size,
        )
        dtype = self.model.vision_tower.patch_embed.proj.weight.dtype
        return mx.array(pixels).astype(dtype), mx.array([grid_thw], dtype=mx.int32)

    def video_close_embeds(self) -> None:
        """Qwen2.5-VL puts nothing after a video but its <|vision_end|> text token."""
        return None

    def key_rotation(self):
        """M-RoPE keys are not renumbered: Qwen2.5-VL streams under `absolute` positions."""
        raise UserError("the compact position policy needs a 1-D RoPE model (LLaVA-OneVision); "
                        f"{self.spec.model_type} uses M-RoPE, so use position_policy='absolute'")

    def embed_tokens(self, ids) -> mx.array:
        """Token ids (a list, or an mx array of them) -> (1, L, E) embeddings."""
        return self.lm.model.embed_tokens(token_array(ids))

    def forward(self, embeds: mx.array, positions: np.ndarray, cache) -> mx.array:
        """Run the LM over new tokens. embeds (1, L, E), positions (3, L) -> last-token logits (1, 1, V)."""
        position_ids = mx.array(positions[:, None, :].astype(np.int32))  # (3, 1, L)
        if embeds.ndim == 2:
            embeds = embeds[None]  # (1, L, E)
        hidden = self.lm.model(None, inputs_embeds=embeds, cache=cache, position_ids=position_ids)
        return self._last_logits(hidden)

    def _last_logits(self, hidden: mx.array) -> mx.array:
        hidden = hidden[:, -1:]  # only the last token's logits are ever used: (1, 1, E)
        if self.lm.args.tie_word_embeddings:
            return self.lm.model.embed_tokens.as_linear(hidden)
        return self.lm.lm_head(hidden)

    def forward_attending(self, embeds: mx.array, positions: np.ndarray, cache) -> tuple[mx.array, list]:
        """forward(), and the last token's attention over the cache: per layer (H_kv, n_cached)
        probability mass summed over each KV head's query heads (evidence.py).

        The decoder loop of mlx-vlm's Qwen2Model, layer by layer with its own modules, so the
        last token's queries (input_layernorm, q_proj, the same M-RoPE) can be read.
        """
        import importlib

        from mlx_vlm.models.base import create_attention_mask

        language = importlib.import_module(self.language_module)  # the model type's own M-RoPE
        position_ids = mx.array(positions[:, None, :].astype(np.int32))  # (3, 1, L)
        h = embeds if embeds.ndim == 3 else embeds[None]  # (1, L, E)
        model = self.lm.model
        mask = create_attention_mask(h, cache)
        rotary = model.layers[0].self_attn.rotary_emb
        pe = None if getattr(rotary, "fused_apply", False) else rotary(h, position_ids)
        masses = []
        for layer, c in zip(model.layers, cache):
            attn = layer.self_attn
            q = attn.q_proj(layer.input_layernorm(h)).reshape(1, h.shape[1], attn.n_heads, -1)
            if hasattr(attn, "q_norm"):  # Qwen3-VL normalizes each head's query before RoPE
                q = attn.q_norm(q)
            q = q.transpose(0, 2, 1, 3)
            if pe is None:
                q, _ = attn.rotary_emb.apply_rotary(q, q, position_ids, unsqueeze_dim=1)
            else:
                q, _ = language.apply_multimodal_rotary_pos_emb(q, q, *pe, unqueeze_dim=1)
            h = layer(h, mask, c, position_ids, pe)
            masses.append(attention_mass(attention_probs(q[:, :, -1], c.dense_keys(), attn.scale), self.spec.kv_heads))
        return self._last_logits(model.norm(h)), masses
